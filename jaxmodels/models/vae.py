"""Stable Diffusion's VAE (diffusers' AutoencoderKL) in Flax, NHWC.

Encoder: conv_in -> per level [layers_per_block x ResBlock, then (not at the last level) a
stride-2 conv on the input padded by one pixel right/bottom] -> mid [ResBlock,
single-head self-attention, ResBlock] -> GroupNorm, SiLU, conv_out to 2 x latent_channels
(mean and log-variance) -> 1x1 quant_conv.
Decoder: 1x1 post_quant_conv -> conv_in -> mid -> per level, widest first,
[(layers_per_block + 1) x ResBlock, then (not at the last level) nearest x2 + conv3x3] ->
GroupNorm, SiLU, conv_out. Every GroupNorm has eps 1e-6.

Latent diffusion trains on z * scaling_factor (0.18215 for SD 1.x/2.x, 0.13025 for SDXL)
where z is a sample (or the mean) of the diagonal Gaussian N(mean, exp(logvar)), logvar
clipped to [-30, 20]; decoding divides by the factor first (see `decode_latents`).

Images are float [N, H, W, 3] in [-1, 1]; latents [N, H/f, W/f, latent_channels] with
f = 2^(levels - 1) (8 for SD).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxmodels.layers.conv_blocks import AttnBlock, ResBlock, conv, group_norm


@dataclasses.dataclass(frozen=True)
class Config:
    """AutoencoderKL hyper-parameters (the names of diffusers' config.json)."""
    in_channels: int = 3
    out_channels: int = 3
    block_out_channels: tuple = (128, 256, 512, 512)
    layers_per_block: int = 2
    latent_channels: int = 4
    norm_num_groups: int = 32
    scaling_factor: float = 0.18215
    shift_factor: float = 0.0
    use_quant_conv: bool = True
    use_post_quant_conv: bool = True
    mid_block_add_attention: bool = True
    dtype: str = "float32"

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)


SIZES = {
    # Stable Diffusion 1.x / 2.x and DiT's sd-vae-ft-mse / -ema (83.7M parameters).
    "sd-vae": {},
    # For tests: the shape of the committed random fixture.
    "vae-tiny": dict(block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8),
}

EPS = 1e-6


class MidBlock(nn.Module):
    """ResBlock -> single-head self-attention -> ResBlock, at the lowest resolution."""
    cfg: Config

    @nn.compact
    def __call__(self, h: jax.Array) -> jax.Array:
        cfg, dtype = self.cfg, jnp.dtype(self.cfg.dtype)
        C = h.shape[-1]
        block = lambda name: ResBlock(C, groups=cfg.norm_num_groups, eps=EPS, zero_out=False,  # noqa: E731
                                      dtype=dtype, name=name)
        h = block("res_0")(h)
        if cfg.mid_block_add_attention:
            h = AttnBlock(1, groups=cfg.norm_num_groups, eps=EPS, zero_out=False, dtype=dtype, name="attn")(h)
        return block("res_1")(h)


class Encoder(nn.Module):
    cfg: Config

    @nn.compact
    def __call__(self, x_NHWC: jax.Array) -> jax.Array:
        cfg, dtype = self.cfg, jnp.dtype(self.cfg.dtype)
        h = conv(cfg.block_out_channels[0], dtype, "conv_in")(x_NHWC.astype(dtype))
        last = len(cfg.block_out_channels) - 1
        for level, ch in enumerate(cfg.block_out_channels):
            for i in range(cfg.layers_per_block):
                h = ResBlock(ch, groups=cfg.norm_num_groups, eps=EPS, zero_out=False, dtype=dtype,
                             name=f"down_{level}_{i}")(h)
            if level != last:
                # diffusers pads (0, 1) right/bottom and convolves with padding 0.
                h = conv(ch, dtype, f"down_{level}_downsample", stride=2, padding=((0, 1), (0, 1)))(h)
        h = MidBlock(cfg, name="mid")(h)
        h = nn.silu(group_norm(h.shape[-1], dtype, "norm_out", cfg.norm_num_groups, EPS)(h))
        return conv(2 * cfg.latent_channels, dtype, "conv_out")(h)


class Decoder(nn.Module):
    cfg: Config

    @nn.compact
    def __call__(self, z_NHWC: jax.Array) -> jax.Array:
        cfg, dtype = self.cfg, jnp.dtype(self.cfg.dtype)
        h = conv(cfg.block_out_channels[-1], dtype, "conv_in")(z_NHWC.astype(dtype))
        h = MidBlock(cfg, name="mid")(h)
        levels = list(reversed(cfg.block_out_channels))
        for level, ch in enumerate(levels):
            for i in range(cfg.layers_per_block + 1):
                h = ResBlock(ch, groups=cfg.norm_num_groups, eps=EPS, zero_out=False, dtype=dtype,
                             name=f"up_{level}_{i}")(h)
            if level != len(levels) - 1:
                h = jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2)
                h = conv(ch, dtype, f"up_{level}_upsample")(h)
        h = nn.silu(group_norm(h.shape[-1], dtype, "norm_out", cfg.norm_num_groups, EPS)(h))
        return conv(cfg.out_channels, dtype, "conv_out")(h).astype(jnp.float32)


class AutoencoderKL(nn.Module):
    """apply(p, x) -> (mean, logvar); apply(p, z, method="decode") -> image."""
    cfg: Config

    def setup(self):
        dtype = jnp.dtype(self.cfg.dtype)
        self.encoder = Encoder(self.cfg)
        self.decoder = Decoder(self.cfg)
        # setup() names submodules by attribute (name=None here).
        self.quant_conv = conv(2 * self.cfg.latent_channels, dtype, None, kernel=1) \
            if self.cfg.use_quant_conv else None
        self.post_quant_conv = conv(self.cfg.latent_channels, dtype, None, kernel=1) \
            if self.cfg.use_post_quant_conv else None

    def encode(self, x_NHWC: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Image in [-1, 1] -> (mean, logvar) of the latent Gaussian (f32, logvar clipped)."""
        moments = self.encoder(x_NHWC)
        if self.quant_conv is not None:
            moments = self.quant_conv(moments)
        moments = moments.astype(jnp.float32)
        mean, logvar = jnp.split(moments, 2, axis=-1)
        return mean, jnp.clip(logvar, -30.0, 20.0)

    def decode(self, z_NHWC: jax.Array) -> jax.Array:
        """Unscaled latent -> image (about [-1, 1], not clipped)."""
        if self.post_quant_conv is not None:
            z_NHWC = self.post_quant_conv(z_NHWC.astype(jnp.dtype(self.cfg.dtype)))
        return self.decoder(z_NHWC)

    def __call__(self, x_NHWC: jax.Array) -> tuple[jax.Array, jax.Array]:
        return self.encode(x_NHWC)


def sample_latent(mean: jax.Array, logvar: jax.Array, rng: Optional[jax.Array]) -> jax.Array:
    """A draw of the diagonal Gaussian (its mean, the "mode", when rng is None)."""
    if rng is None:
        return mean
    return mean + jnp.exp(0.5 * logvar) * jax.random.normal(rng, mean.shape, mean.dtype)


def encode_images(model: AutoencoderKL, params, images_NHWC: jax.Array, rng: Optional[jax.Array] = None) -> jax.Array:
    """Images in [-1, 1] -> latents ready for diffusion: (z - shift_factor) * scaling_factor."""
    mean, logvar = model.apply({"params": params}, images_NHWC, method=AutoencoderKL.encode)
    z = sample_latent(mean, logvar, rng)
    return (z - model.cfg.shift_factor) * model.cfg.scaling_factor


def decode_latents(model: AutoencoderKL, params, latents_NHWC: jax.Array) -> jax.Array:
    """Inverse of encode_images: scaled latents -> images in [-1, 1] (clipped)."""
    z = latents_NHWC / model.cfg.scaling_factor + model.cfg.shift_factor
    return jnp.clip(model.apply({"params": params}, z, method=AutoencoderKL.decode), -1.0, 1.0)


def decode_in_batches(model: AutoencoderKL, params, latents_NHWC, batch_size: int = 16):
    """Unscaled latents (numpy, any count) -> uint8 images [N, H, W, C], batch by batch
    (one compiled shape: the last batch is padded)."""
    import numpy as np

    decode = jax.jit(lambda p, z: jnp.clip(model.apply({"params": p}, z, method=AutoencoderKL.decode), -1, 1))
    latents_NHWC = np.asarray(latents_NHWC, np.float32)
    out = []
    for start in range(0, len(latents_NHWC), batch_size):
        chunk = latents_NHWC[start:start + batch_size]
        n = len(chunk)
        chunk = np.concatenate([chunk, np.zeros((batch_size - n,) + chunk.shape[1:], chunk.dtype)])
        images = np.asarray(decode(params, chunk))[:n]
        out.append(np.clip(np.round((images + 1.0) * 127.5), 0, 255).astype(np.uint8))
    return np.concatenate(out)


def make_config(cfg: Mapping[str, Any]) -> Config:
    """Config from a dict (optional "size" from SIZES plus overrides)."""
    from jaxmodels.models import sized_config

    return sized_config(Config, SIZES, cfg, "vae")


def build(cfg: Mapping[str, Any]) -> AutoencoderKL:
    return AutoencoderKL(make_config(cfg))
