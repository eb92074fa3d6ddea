"""AutoencoderKL (models/vae.py) against the tiny random diffusers fixture."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmodels.config import ConfigError
from jaxmodels.convert.vae import load_vae
from jaxmodels.models import vae

FIXTURE = os.path.join(os.path.dirname(__file__), "..", "fixtures", "vae")


def _rel(a, b):
    return float(np.max(np.abs(np.asarray(a) - b)) / np.max(np.abs(b)))


@pytest.fixture(scope="module")
def loaded():
    return load_vae(FIXTURE), dict(np.load(os.path.join(FIXTURE, "reference.npz")))


def test_encode_decode_match_diffusers(loaded):
    (model, params), ref = loaded
    mean, logvar = jax.jit(lambda p, x: model.apply({"params": p}, x))(params, ref["image"])
    assert mean.shape == (2, 8, 8, 4)
    assert _rel(mean, ref["mean"]) <= 1e-4
    assert _rel(logvar, ref["logvar"]) <= 1e-4
    decoded = jax.jit(lambda p, z: model.apply({"params": p}, z, method=vae.AutoencoderKL.decode))(
        params, ref["mean"])
    assert decoded.shape == (2, 16, 16, 3)
    assert _rel(decoded, ref["decoded"]) <= 1e-4


def test_scaling_roundtrip_and_sampling(loaded):
    (model, params), ref = loaded
    assert model.cfg.scaling_factor == pytest.approx(0.18215)
    z = vae.encode_images(model, params, ref["image"])
    np.testing.assert_allclose(z, ref["mean"] * 0.18215, rtol=1e-4, atol=1e-6)
    images = vae.decode_latents(model, params, z)
    np.testing.assert_allclose(images, np.clip(ref["decoded"], -1, 1), rtol=1e-4, atol=1e-5)
    drawn = vae.encode_images(model, params, ref["image"], jax.random.key(0))
    std = np.exp(0.5 * ref["logvar"]) * 0.18215
    dev = (np.asarray(drawn) - ref["mean"] * 0.18215) / std
    assert 0.5 < dev.std() < 1.5 and not np.allclose(drawn, z)


def test_legacy_attention_names_and_errors(tmp_path, loaded):
    from safetensors.numpy import load_file, save_file
    import shutil

    (model, params), ref = loaded
    tensors = load_file(os.path.join(FIXTURE, "diffusion_pytorch_model.safetensors"))
    legacy = {}
    for k, v in tensors.items():
        for new, old in (("to_q", "query"), ("to_k", "key"), ("to_v", "value"), ("to_out.0", "proj_attn")):
            k = k.replace(f".{new}.", f".{old}.")
        legacy[k] = v
    shutil.copy(os.path.join(FIXTURE, "config.json"), tmp_path / "config.json")
    save_file(legacy, str(tmp_path / "diffusion_pytorch_model.safetensors"))
    _, legacy_params = load_vae(str(tmp_path))
    jax.tree.map(np.testing.assert_array_equal, legacy_params, params)
    del legacy["encoder.conv_in.weight"]
    save_file(legacy, str(tmp_path / "diffusion_pytorch_model.safetensors"))
    with pytest.raises(ConfigError, match="encoder.conv_in.weight"):
        load_vae(str(tmp_path))
    with pytest.raises(ConfigError, match="does not exist"):
        load_vae(str(tmp_path / "nope"))


def test_sd_vae_parameter_count():
    model = vae.build({"size": "sd-vae"})
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3))))
    dec = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 2, 2, 4)),
                                            method=vae.AutoencoderKL.decode))
    count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves({**shapes["params"], **dec["params"]}))
    assert abs(count / 1e6 - 83.65) < 0.05   # sd-vae-ft-mse: 83,653,863 parameters


def test_decode_samples_uses_the_configs_vae(loaded):
    import ml_collections

    from jaxmodels.tasks.diffusion import decode_samples

    (model, params), ref = loaded
    data = ml_collections.ConfigDict(dict(vae=FIXTURE, latent_scale=0.18215))
    images = decode_samples(data, ref["mean"] * 0.18215)
    want = np.clip(np.round((np.clip(ref["decoded"], -1, 1) + 1) * 127.5), 0, 255)
    assert images.dtype == np.uint8 and images.shape == (2, 16, 16, 3)
    assert np.max(np.abs(images.astype(int) - want)) <= 1
    assert decode_samples(ml_collections.ConfigDict(dict(vae="", latent_scale=1.0)), ref["mean"]) is None
    with pytest.raises(ConfigError, match="4-channel"):
        decode_samples(data, ref["image"])
