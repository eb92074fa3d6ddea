"""The autoencoder task: trains models/vae.py's AutoencoderKL on images, the first stage of
latent diffusion (what a from-scratch light Stable Diffusion trains before its U-Net/DiT).

Loss (the core of the LDM / Stable Diffusion first-stage recipe):
    mean, logvar = encode(x);  z = mean + exp(logvar / 2) * eps;  x' = decode(z)
    loss = mean_pixels(|x - x'|)  +  kl_weight * KL(N(mean, exp(logvar)) || N(0, 1)) / pixels
The KL is summed over the latent and divided by the pixel count of an image: SD sums both
terms over the image and uses kl_weight 1e-6, and dividing both by the same count keeps
that ratio while the logged loss reads as a per-pixel error. `task.reconstruction` "l1"
(SD's choice) or "l2". Left out of SD's LPIPSWithDiscriminator: the LPIPS perceptual term
(needs pretrained VGG weights) and the patch-GAN (switched on late in SD's training); so
reconstructions are blurrier than SD's VAE at equal size.

Config `task` section (defaults in TASK_DEFAULTS): reconstruction, kl_weight, and
eval_images (held-out images per evaluation; 0 disables it).

evaluate (at eval intervals and at the end, with the EMA params when kept):
  * workdir/samples/recon_XXXXXX.png: rows of originals, each followed by its row of
    reconstructions (the mean decoded);
  * the scaling factor 1 / std of the encoded latents (the means, as launch.encode stores
    them) over the held-out images, as the LDM paper sets it for SD's VAE;
  * workdir/vae/: the trained VAE in diffusers' layout (config.json with that
    scaling_factor + diffusion_pytorch_model.safetensors), which `launch.encode --vae`,
    `data.vae` and diffusers' AutoencoderKL.from_pretrained read; `--vae <workdir>` finds it.
Metrics: recon_l1, psnr (dB, images in [0, 1]), latent_std, scaling_factor.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxmodels.config import ConfigError
from jaxmodels.data import images as image_data
from jaxmodels.models import vae as vae_model
from jaxmodels.tasks.base import Task

TASK_DEFAULTS = dict(reconstruction="l1", kl_weight=1e-6, eval_images=32)
RECONSTRUCTIONS = ("l1", "l2")


def autoencoder_task_config(**overrides):
    """The `task` section of an autoencoder config: TASK_DEFAULTS + overrides."""
    import ml_collections

    t = dict(TASK_DEFAULTS, name="autoencoder")
    t.update(overrides)
    return ml_collections.ConfigDict(t)


def _encode_decode(module: vae_model.AutoencoderKL, x, z_rng=None):
    """(mean, logvar, reconstruction) -- one method so init creates every parameter."""
    mean, logvar = module.encode(x)
    return mean, logvar, module.decode(vae_model.sample_latent(mean, logvar, z_rng))


class AutoencoderTask(Task):
    unit = "images"

    def __init__(self, cfg):
        super().__init__(cfg)
        if not isinstance(self.model, vae_model.AutoencoderKL):
            raise ConfigError(f"task 'autoencoder' trains model.name='vae', not {cfg.model.get('name')!r}")
        unknown = sorted(set(cfg.task.keys()) - set(TASK_DEFAULTS) - {"name"})
        if unknown:
            raise ConfigError(f"unknown task field(s) {unknown} for task 'autoencoder'; valid: "
                              f"{', '.join(sorted(TASK_DEFAULTS))}")
        self.opts = dict(TASK_DEFAULTS, **{k: v for k, v in cfg.task.items() if k != "name"})
        if self.opts["reconstruction"] not in RECONSTRUCTIONS:
            raise ConfigError(f"task.reconstruction {self.opts['reconstruction']!r}; valid: "
                              f"{', '.join(RECONSTRUCTIONS)}")
        size = int(cfg.data.get("image_size", 32))
        f = self.model.cfg.downsample_factor
        if size % f:
            raise ConfigError(f"data.image_size {size} is not a multiple of the VAE's downsampling factor {f}: "
                              f"set data.image_size to a multiple of {f}")
        self.image_shape = (size, size, self.model.cfg.in_channels)

    def init_params(self, rng: jax.Array):
        x = jnp.zeros((1,) + self.image_shape, jnp.float32)
        return self.model.init(rng, x, method=_encode_decode)["params"]

    def loss(self, params, batch, rng, train: bool = True):
        x = jnp.asarray(batch["image"], jnp.float32)
        mean, logvar, rec = self.model.apply({"params": params}, x, rng, method=_encode_decode)
        err = rec - x
        per_pixel = jnp.abs(err) if self.opts["reconstruction"] == "l1" else jnp.square(err)
        pixels = float(np.prod(x.shape[1:]))
        kl_N = 0.5 * jnp.sum(jnp.square(mean) + jnp.exp(logvar) - 1.0 - logvar, axis=(1, 2, 3))
        rec_loss = per_pixel.mean()
        kl = kl_N.mean()
        loss = rec_loss + float(self.opts["kl_weight"]) * kl / pixels
        aux = {"weight": jnp.asarray(x.shape[0], jnp.float32), "rec": rec_loss,
               "mse": jnp.square(err).mean(), "kl": kl}
        return loss, aux

    def dataset(self, split: str, batch_size: int, seed: int):
        return image_data.image_dataset(self.cfg.data, split, batch_size, seed)

    def abstract_batch(self, batch_size: int) -> dict:
        return {k: jax.ShapeDtypeStruct((batch_size,) + tuple(shape), dtype)
                for k, (shape, dtype) in image_data.example_shapes(self.cfg.data).items()}

    def held_out_images(self, num: int) -> np.ndarray:
        """The first `num` val images, float32 [num, H, W, C] in [-1, 1]."""
        source = image_data.image_source(self.cfg.data, "val")
        if len(source) == 0:
            raise ConfigError("the val split is empty: raise data.val_size")
        return np.stack([image_data.to_unit_range(source[i % len(source)]["image"]) for i in range(num)])

    def evaluate(self, params, step: int, workdir: str) -> dict:
        num = int(self.opts["eval_images"])
        if num <= 0:
            return {}
        images = self.held_out_images(num)
        encode = jax.jit(lambda p, x: self.model.apply({"params": p}, x, method=vae_model.AutoencoderKL.encode)[0])
        decode = jax.jit(lambda p, z: self.model.apply({"params": p}, z, method=vae_model.AutoencoderKL.decode))
        means = np.asarray(encode(params, images))
        recon = np.clip(np.asarray(decode(params, means)), -1.0, 1.0)
        std, scaling = float(means.std()), scaling_factor_of(means)
        export_dir = os.path.join(workdir, "vae")
        from jaxmodels.convert.vae import save_diffusers

        save_diffusers(dataclasses.replace(self.model.cfg, scaling_factor=scaling), params, export_dir,
                       sample_size=self.image_shape[0])
        with open(os.path.join(export_dir, "jaxmodels_step.json"), "w") as f:
            json.dump({"step": int(step), "latent_std": std, "eval_images": num}, f)
        self.save_recon_grid(images, recon, os.path.join(workdir, "samples", f"recon_{step:06d}.png"))
        mse = float(np.mean(np.square((recon - images) / 2.0)))     # in [0, 1] units
        return {"recon_l1": float(np.mean(np.abs(recon - images))), "psnr": float(-10.0 * np.log10(max(mse, 1e-12))),
                "latent_std": std, "scaling_factor": scaling}

    @staticmethod
    def save_recon_grid(images: np.ndarray, recon: np.ndarray, path: str, cols: int = 8) -> str:
        """Rows of `cols` originals, each followed by its row of reconstructions."""
        from jaxmodels.diffusion.grid import save_grid

        n = len(images) // cols * cols or len(images)
        cols = min(cols, n)
        rows = []
        for start in range(0, n, cols):
            rows += [images[start:start + cols], recon[start:start + cols]]
        return save_grid(np.concatenate(rows), path, rows=len(rows))


def scaling_factor_of(latents: Any) -> float:
    """1 / std of a set of (unscaled) latents: the LDM paper's choice of scaling factor."""
    return 1.0 / float(np.std(np.asarray(latents, np.float64)))
