"""T5 (v1.1 layout) and CLIP text encoders against tiny random transformers fixtures."""
import os

import jax
import numpy as np
import pytest

from jaxmodels.config import ConfigError
from jaxmodels.convert.text_encoders import load_text_encoder
from jaxmodels.models import t5

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "fixtures")


def _rel(a, b):
    return float(np.max(np.abs(np.asarray(a) - b)) / np.max(np.abs(b)))


def _load(name):
    folder = os.path.join(FIXTURES, name)
    return load_text_encoder(folder), dict(np.load(os.path.join(folder, "reference.npz")))


def test_t5_encoder_matches_transformers():
    (model, params), ref = _load("t5")
    hidden = jax.jit(lambda p, t, m: model.apply({"params": p}, t, m))(params, ref["tokens"], ref["mask"])
    assert hidden.shape == (2, 12, 32)
    assert _rel(hidden, ref["hidden"]) < 1e-4
    # The mask matters: without it row 1's real tokens attend to its padding.
    unmasked = model.apply({"params": params}, ref["tokens"])
    assert _rel(unmasked[1, :7], ref["hidden"][1, :7]) > 1e-3
    np.testing.assert_allclose(unmasked[0], hidden[0], rtol=1e-5, atol=1e-6)


def test_t5_relative_buckets():
    # Bidirectional: 4 buckets per side; |d| < 2 exact, then log-spaced up to max_distance 20.
    rel = np.arange(-25, 26)
    b = np.asarray(t5.relative_position_bucket(rel, 8, 20))
    assert b[25] == 0 and b[26] == 5 and b[24] == 1
    assert set(b[rel > 0]) == {5, 6, 7} and set(b[rel < 0]) == {1, 2, 3}
    assert b[-1] == 7 and b[0] == 3   # far offsets clip to the last bucket of their side


def test_clip_text_encoder_matches_transformers():
    (model, params), ref = _load("clip")
    out = jax.jit(lambda p, t, m: model.apply({"params": p}, t, m))(params, ref["tokens"], ref["mask"])
    assert _rel(out["hidden"], ref["hidden"]) < 1e-4
    assert _rel(out["penultimate"], ref["penultimate"]) < 1e-4
    assert _rel(out["pooled"], ref["pooled"]) < 1e-4


def test_text_encoder_errors(tmp_path):
    import shutil

    from safetensors.numpy import load_file, save_file

    folder = tmp_path / "t5"
    shutil.copytree(os.path.join(FIXTURES, "t5"), folder)
    tensors = load_file(str(folder / "model.safetensors"))
    del tensors["encoder.block.1.layer.1.DenseReluDense.wo.weight"]
    save_file(tensors, str(folder / "model.safetensors"))
    with pytest.raises(ConfigError, match="encoder.block.1.layer.1.DenseReluDense.wo.weight"):
        load_text_encoder(str(folder))
    (folder / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(ConfigError, match="not a supported caption encoder"):
        load_text_encoder(str(folder))
