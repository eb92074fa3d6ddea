"""The judge: a tiny one (trained in seconds) already reads shapes far above chance; its
cache round-trips; the Frechet distance is ~0 for a set against itself and grows with a shift."""
from __future__ import annotations

import numpy as np
import pytest

from jaxmodels.diffusion import judge as J

TINY = J.JudgeRecipe(width=16, features=64, train_size=1024, test_size=256, steps=150, batch_size=32,
                     lr=3e-3, seed=1)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("judge"))


@pytest.fixture(scope="module")
def tiny(cache):
    return J.load_judge(TINY, directory=cache, log=None)  # a cache miss: trains


def test_tiny_judge_beats_chance_by_far(tiny):
    m = tiny.metrics
    assert m["shape"] > 0.4          # chance 1/8
    assert m["background"] > 0.9     # chance 1/3
    assert m["colour"] > 0.8         # chance 1/6
    images, attrs = J.generate(64, seed=5)
    acc = J.attribute_accuracy(images, attrs, tiny)
    assert acc["mean"] > 0.6 and set(acc) == set(J.HEADS) | {"mean", "all_attributes"}
    assert J.judge_accuracy(images, attrs[:, 0], tiny) == pytest.approx(acc["shape"])
    # uint8 input is read the same as [-1, 1] floats
    as_u8 = np.clip(np.round((images + 1) * 127.5), 0, 255).astype(np.uint8)
    assert J.judge_accuracy(as_u8, attrs[:, 0], tiny) == pytest.approx(acc["shape"], abs=1 / 64)


def test_cache_roundtrip_skips_training(tiny, cache, monkeypatch):
    first = tiny
    monkeypatch.setattr(J, "train_judge", lambda *a, **k: pytest.fail("cached judge retrained"))
    second = J.load_judge(TINY, directory=cache, log=None)
    images, _ = J.generate(16, seed=9)
    np.testing.assert_allclose(second.features(images), first.features(images), rtol=1e-6, atol=1e-6)
    assert second.metrics["shape"] == first.metrics["shape"]
    assert J.recipe_hash(TINY) != J.recipe_hash(J.JudgeRecipe())


def test_frechet_distance_zero_for_itself_and_grows_with_shift(tiny):
    rng = np.random.default_rng(0)
    f = rng.normal(size=(500, 6))
    assert abs(J.frechet_from_features(f, f)) < 1e-8
    # a pure mean shift c in every dimension adds exactly D c^2
    assert J.frechet_from_features(f, f + 0.5) == pytest.approx(6 * 0.25, rel=1e-6)
    # scaling by s: trace terms give D-dim sum of (1 - s)^2 var
    g = rng.normal(size=(500, 6))
    assert J.frechet_from_features(f, 2 * g) > J.frechet_from_features(f, g)
    real, _ = J.generate(128, seed=11)
    other, _ = J.generate(128, seed=12)
    assert abs(J.frechet_distance(real, real, tiny)) < 1e-3
    near = J.frechet_distance(real, other, tiny)
    shifted = J.frechet_distance(real, np.clip(other * 0.5 + 0.4, -1, 1), tiny)
    assert shifted > 2 * near
