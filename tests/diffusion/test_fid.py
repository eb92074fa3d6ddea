"""FID InceptionV3 and the Frechet distance against pytorch-fid (committed fixture)."""
import os
import sys

import numpy as np
import pytest

from jaxmodels.config import ConfigError
from jaxmodels.diffusion import fid

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "fixtures")
sys.path.insert(0, FIXTURES)
from inception_weights import state_dict  # noqa: E402

REF = dict(np.load(os.path.join(FIXTURES, "inception", "reference.npz")))


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """The stand-in weights as the safetensors file a user converts (torch-free from here)."""
    from safetensors.numpy import save_file

    path = str(tmp_path_factory.mktemp("inception") / "fid_inception.safetensors")
    save_file(state_dict(), path)
    return path


def test_frechet_distance_matches_pytorch_fid():
    got = fid.frechet_distance(*fid.statistics(REF["feats_a"]), *fid.statistics(REF["feats_b"]))
    assert abs(got - float(REF["fid"])) / float(REF["fid"]) < 1e-3
    same = fid.frechet_distance(*fid.statistics(REF["feats_a"]), *fid.statistics(REF["feats_a"]))
    assert abs(same) < 1e-6


def test_resize_matches_torch_interpolate():
    from jaxmodels.models.inception import resize_bilinear

    for key, size in (("resize_small", 23), ("resize_large", 17)):
        got = np.asarray(resize_bilinear(REF[key], size))
        np.testing.assert_allclose(got, REF[key + "_out"], rtol=1e-5, atol=1e-5, err_msg=key)


def _is_by_entropies(logits, splits):
    """The Inception Score written the other way: exp(H(p(y)) - E_x H(p(y|x))) per part."""
    out = []
    for part in np.array_split(np.asarray(logits, np.float64), splits):
        p = np.exp(part - part.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        py = p.mean(0)
        h_marginal = -np.sum(py * np.log(py))
        h_conditional = -np.mean(np.sum(p * np.log(p), axis=1))
        out.append(np.exp(h_marginal - h_conditional))
    return np.mean(out), np.std(out)


def test_inception_score_formula_on_fixture_logits():
    w = state_dict()
    # pytorch-fid's pool3 features of the fixture images through the stand-in classifier, and
    # a larger seeded set of logits for the 10-part split.
    fixture = REF["features"].astype(np.float64) @ w["fc.weight"].T.astype(np.float64) + w["fc.bias"]
    seeded = np.random.default_rng(0).normal(0, 3.0, (500, 1008))
    for logits, splits in ((fixture, 1), (fixture, 2), (seeded, 10)):
        got = fid.inception_score(logits, splits)
        np.testing.assert_allclose(got, _is_by_entropies(logits, splits), rtol=1e-9)
    assert fid.inception_score(seeded, 10)[0] > 1.5
    # The two ends of the scale: one class everywhere -> 1; N confident distinct classes -> N.
    assert fid.inception_score(np.zeros((20, 1008)), 2)[0] == pytest.approx(1.0)
    one_hot = 50.0 * np.eye(1008)[:40]
    assert fid.inception_score(one_hot, 1)[0] == pytest.approx(40.0, rel=1e-6)
    with pytest.raises(ConfigError, match="at least"):
        fid.inception_score(fixture, 10)


@pytest.mark.slow   # the full 24M-parameter network at 299 x 299: about 1-2 min on two loaded cores
def test_inception_features_and_fid_match_pytorch_fid(weights, tmp_path):
    from PIL import Image

    features = fid.FIDFeatures(weights, batch_size=4, logits=True)
    got = features(*fid.array_batches(REF["images"], 4), progress=False)
    assert got.shape == (4, 2048)
    rel = np.max(np.abs(got - REF["features"])) / np.max(np.abs(REF["features"]))
    assert rel < 1e-4, rel
    # The Inception Score's logits: the checkpoint's fc on those features.
    w = state_dict()
    want = REF["features"] @ w["fc.weight"].T + w["fc.bias"]
    assert features.last_logits.shape == (4, 1008)
    assert np.max(np.abs(features.last_logits - want)) / np.max(np.abs(want)) < 1e-4
    # The same images read back from a folder (PNG is lossless) give the same features.
    for i, image in enumerate(REF["images"]):
        Image.fromarray(image).save(tmp_path / f"{i}.png")
    again = features(*fid.folder_batches(str(tmp_path), 4), progress=False)
    np.testing.assert_allclose(again, got, rtol=1e-5, atol=1e-5)
    # FID of the features: ours vs pytorch-fid's formula on pytorch-fid's features.
    a, b = got[:3].repeat(2, 0) + np.arange(6)[:, None] * 0.01, got[1:].repeat(2, 0)
    ra, rb = REF["features"][:3].repeat(2, 0) + np.arange(6)[:, None] * 0.01, REF["features"][1:].repeat(2, 0)
    mine = fid.frechet_distance(*fid.statistics(a), *fid.statistics(b))
    theirs = fid.frechet_distance(*fid.statistics(ra), *fid.statistics(rb))
    assert abs(mine - theirs) / theirs < 1e-3


def test_bad_weights_and_references(tmp_path):
    from safetensors.numpy import save_file

    from jaxmodels.convert.inception import load_fid_inception

    with pytest.raises(ConfigError, match="convert it once"):
        load_fid_inception(str(tmp_path / "missing.safetensors"))
    partial = {k: v for k, v in state_dict().items() if not k.startswith("Mixed_7c")}
    save_file(partial, str(tmp_path / "partial.safetensors"))
    with pytest.raises(ConfigError, match="Mixed_7c"):
        load_fid_inception(str(tmp_path / "partial.safetensors"))
    no_fc = {k: v for k, v in state_dict().items() if not k.startswith("fc.")}
    save_file(no_fc, str(tmp_path / "no_fc.safetensors"))
    load_fid_inception(str(tmp_path / "no_fc.safetensors"))   # FID does not need the classifier
    with pytest.raises(ConfigError, match="fc.weight"):
        load_fid_inception(str(tmp_path / "no_fc.safetensors"), logits=True)
    np.savez(tmp_path / "stats.npz", mu=np.zeros(3), sigma=np.eye(3))
    mu, sigma = fid.reference_statistics(str(tmp_path / "stats.npz"), None)
    assert fid.frechet_distance(mu, sigma, mu + 1, sigma) == pytest.approx(3.0)
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(ConfigError, match="arr_0"):
        fid.reference_statistics(str(tmp_path / "other.npz"), None)
