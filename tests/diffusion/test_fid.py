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


@pytest.mark.slow   # the full 24M-parameter network at 299 x 299: about 1-2 min on two loaded cores
def test_inception_features_and_fid_match_pytorch_fid(weights, tmp_path):
    from PIL import Image

    features = fid.FIDFeatures(weights, batch_size=4)
    got = features(*fid.array_batches(REF["images"], 4), progress=False)
    assert got.shape == (4, 2048)
    rel = np.max(np.abs(got - REF["features"])) / np.max(np.abs(REF["features"]))
    assert rel < 1e-4, rel
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
    np.savez(tmp_path / "stats.npz", mu=np.zeros(3), sigma=np.eye(3))
    mu, sigma = fid.reference_statistics(str(tmp_path / "stats.npz"), None)
    assert fid.frechet_distance(mu, sigma, mu + 1, sigma) == pytest.approx(3.0)
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(ConfigError, match="arr_0"):
        fid.reference_statistics(str(tmp_path / "other.npz"), None)
