"""The autoencoder task (tasks/autoencoder.py): SD's VAE trained from scratch, exported as a
diffusers folder, read back by launch.encode."""
from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from PIL import Image

from jaxmodels.config import ConfigError, load_config
from jaxmodels.data import glyphs
from jaxmodels.models import vae as vae_model
from jaxmodels.tasks import build_task

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
VAE_SMALL = os.path.join(ROOT, "configs", "vae_small.py")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The :smoke task after 12 Adam steps on one fixed batch, and the loss curve."""
    task = build_task(load_config(VAE_SMALL + ":smoke"))
    params = task.init_params(jax.random.key(0))
    batch = {k: jnp.asarray(v) for k, v in next(iter(task.dataset("train", 8, 0))).items()}
    tx = optax.adam(3e-3)
    rng = jax.random.key(1)   # the same latent noise every step: the loss is a function of params

    @jax.jit
    def step(p, s):
        (loss, aux), g = jax.value_and_grad(task.loss, has_aux=True)(p, batch, rng)
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s, loss, aux

    state, losses = tx.init(params), []
    for _ in range(12):
        params, state, loss, aux = step(params, state)
        losses.append(float(loss))
    return task, params, losses, aux


def test_loss_falls_and_terms_add_up(trained):
    task, _, losses, aux = trained
    assert np.all(np.isfinite(losses))
    assert losses[-1] < 0.7 * losses[0], losses
    assert float(aux["weight"]) == 8.0 and float(aux["kl"]) > 0
    pixels = 16 * 16 * 3
    # loss = per-pixel L1 + kl_weight * summed KL / pixels (aux is from the last step's params)
    assert float(aux["rec"]) + 1e-6 * float(aux["kl"]) / pixels == pytest.approx(losses[-1], rel=0.2)


def test_export_roundtrips_with_identical_outputs_and_scaling(trained, tmp_path):
    from jaxmodels.convert.vae import load_vae

    task, params, _, _ = trained
    metrics = task.evaluate(params, 12, str(tmp_path))
    assert os.path.isfile(tmp_path / "samples" / "recon_000012.png")
    grid = np.asarray(Image.open(tmp_path / "samples" / "recon_000012.png"))
    assert grid.shape == (2 * 17 + 1, 8 * 17 + 1, 3)   # originals row + reconstructions row
    model, loaded = load_vae(str(tmp_path))               # the run folder finds its vae/
    assert model.cfg.block_out_channels == (8, 16) and model.cfg.norm_num_groups == 4
    images = task.held_out_images(8)
    means = np.asarray(task.model.apply({"params": params}, images, method=vae_model.AutoencoderKL.encode)[0])
    assert model.cfg.scaling_factor == pytest.approx(1.0 / means.std(), rel=1e-6)
    assert metrics["scaling_factor"] == pytest.approx(model.cfg.scaling_factor)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(loaded)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    z = vae_model.encode_images(model, loaded, jnp.asarray(images))
    np.testing.assert_array_equal(np.asarray(z), means * model.cfg.scaling_factor)
    back = vae_model.decode_latents(model, loaded, z)
    want = np.clip(task.model.apply({"params": params}, means, method=vae_model.AutoencoderKL.decode), -1, 1)
    np.testing.assert_allclose(np.asarray(back), np.asarray(want), atol=1e-5)
    with open(tmp_path / "vae" / "config.json") as f:
        hf = json.load(f)
    assert hf["_class_name"] == "AutoencoderKL" and hf["down_block_types"] == ["DownEncoderBlock2D"] * 2


@pytest.mark.slow  # a second worker would train the shared fixture again (~30 s)
def test_launch_encode_reads_the_trained_run(trained, tmp_path):
    from launch import encode

    task, params, _, _ = trained
    task.evaluate(params, 12, str(tmp_path / "run"))
    os.makedirs(tmp_path / "run" / "checkpoints" / "12")   # what a run folder looks like
    glyphs.write_folder(str(tmp_path / "images"), 8, image_size=16)
    assert encode.main(["--images", str(tmp_path / "images"), "--vae", str(tmp_path / "run"), "--out",
                        str(tmp_path / "latents"), "--image-size", "16", "--batch-size", "8",
                        "--shard-size", "8", "--no-progress"]) == 0
    latents = np.load(tmp_path / "latents" / "latents_00000.npy")
    assert latents.shape == (8, 8, 8, 4) and np.all(np.isfinite(latents))
    with open(tmp_path / "latents" / "manifest.json") as f:
        manifest = json.load(f)
    with open(tmp_path / "run" / "vae" / "config.json") as f:
        assert manifest["options"]["scaling_factor"] == pytest.approx(json.load(f)["scaling_factor"])


def test_config_errors_name_the_fix(tmp_path):
    from jaxmodels.convert.vae import load_vae

    cfg = load_config(VAE_SMALL + ":smoke")
    cfg.task.reconstruction = "lpips"
    with pytest.raises(ConfigError, match="valid: l1, l2"):
        build_task(cfg)
    cfg = load_config(VAE_SMALL + ":smoke")
    cfg.data.image_size = 15
    with pytest.raises(ConfigError, match="multiple of 2"):
        build_task(cfg)
    os.makedirs(tmp_path / "checkpoints")
    with pytest.raises(ConfigError, match="without an exported vae/"):
        load_vae(str(tmp_path))
