"""The DDPM / improved-diffusion U-Net (the diffusers UNet2DModel family), NHWC.

input conv -> for each level: num_res_blocks x [ResBlock (+ attention)] then a stride-2
conv down -> middle [ResBlock, attention, ResBlock] -> mirrored up path whose blocks
concatenate the matching skip activation, then a nearest x2 + conv up -> GroupNorm, SiLU,
zero-init conv out.

ResBlock: GroupNorm(32) -> SiLU -> conv3x3 -> + timestep embedding (added, or
"scale-shift norm": GN(h) * (1 + scale) + shift, iDDPM) -> GroupNorm -> SiLU -> dropout
-> zero-init conv3x3, plus a 1x1 conv skip when channels change. The time embedding is
timestep_embedding(t, C) -> Dense(4C) -> SiLU -> Dense(4C) (C = model_channels), plus a
label embedding (null class = num_classes) when conditioning="class".

Attention at the resolutions in `attention_resolutions` (pixels, e.g. (16, 8) for 64x64
input): GroupNorm -> multi-head self-attention -> zero-init projection, residual; with
conditioning="text" followed by LayerNorm -> cross-attention to the caption tokens
(zero-init projection), as Stable Diffusion's transformer blocks do (without their MLP).

Same call contract as DiT (jaxmodels/models/dit.py): apply({"params": p}, x_NHWC, t_N,
cond, train=False, rngs={"dropout": r}) -> [N, H, W, C] (2C with learn_sigma); cond is
{"label"} / {"text_tokens", "text_mask"} / {"text_emb", "text_mask"}, optional "drop".
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxmodels.config import ConfigError
from jaxmodels.layers import adapters
from jaxmodels.layers.conditioning import CONDITIONINGS, CaptionEmbedder, check_conditioning, drop_mask
from jaxmodels.layers.conv_blocks import TORCH_INIT, AttnBlock, ResBlock, conv, group_norm
from jaxmodels.layers.dense import Dense
from jaxmodels.layers.embeddings import timestep_embedding
from jaxmodels.layers.stack import remat_block


@dataclasses.dataclass(frozen=True)
class Config:
    """Every U-Net hyper-parameter; named sizes in SIZES."""
    input_size: int = 64
    in_channels: int = 3
    model_channels: int = 128
    channel_mult: tuple = (1, 2, 2, 2)
    num_res_blocks: int = 2
    attention_resolutions: tuple = (16, 8)   # pixel resolutions that get attention
    num_head_channels: int = 64              # heads = channels // this (-1: use num_heads)
    num_heads: int = 4
    dropout: float = 0.1
    use_scale_shift_norm: bool = True
    learn_sigma: bool = False
    conditioning: str = "none"               # "none" | "class" | "text"
    num_classes: int = 1000
    class_dropout: float = 0.1
    # Text conditioning (same cond dict as PixArt).
    text_encoder: str = "bytes"              # "bytes" | "precomputed"
    text_len: int = 120
    text_dim: int = 4096                     # precomputed feature width (informational)
    context_dim: int = 256                   # caption tokens are projected to this width
    caption_dropout: float = 0.1
    encoder_width: int = 256
    encoder_depth: int = 4
    encoder_heads: int = 4
    dtype: str = "float32"
    remat: str = "none"                      # checkpoint policy applied per ResBlock / attention
    adapters: Any = None          # LoRA / QLoRA / state tuning (jaxmodels.layers.adapters)


SIZES = {
    # DDPM's 35.7M CIFAR-10 architecture (ch 128, mult 1,2,2,2, 2 blocks, additive time
    # embedding, dropout 0.1) on 64x64 RGB with attention at 16x16: 35.7M params
    # unconditional, 36.2M with classes, ~40M with the byte text encoder + cross-attention.
    "unet-ddpm64": dict(input_size=64, in_channels=3, model_channels=128, channel_mult=(1, 2, 2, 2),
                        num_res_blocks=2, attention_resolutions=(16,), num_head_channels=64,
                        use_scale_shift_norm=False, dropout=0.1),
    # For tests and CPU smoke runs.
    "unet-tiny": dict(input_size=16, in_channels=3, model_channels=32, channel_mult=(1, 2),
                      num_res_blocks=1, attention_resolutions=(8,), num_head_channels=16,
                      dropout=0.0, num_classes=10, text_len=16, context_dim=32,
                      encoder_width=32, encoder_depth=1, encoder_heads=2),
}


class UNet(nn.Module):
    """The U-Net backbone; see the module docstring for the architecture and contract."""
    cfg: Config

    @adapters.scoped
    @nn.compact
    def __call__(self, x_NHWC: jax.Array, t_N: jax.Array, cond: Optional[Mapping[str, jax.Array]] = None,
                 train: bool = False) -> jax.Array:
        cfg = self.cfg
        dtype = jnp.dtype(cfg.dtype)
        cond = {} if cond is None else cond
        N, H, W, C_in = x_NHWC.shape
        if H % (2 ** (len(cfg.channel_mult) - 1)) or W % (2 ** (len(cfg.channel_mult) - 1)):
            raise ValueError(f"image {H}x{W} must be divisible by 2^{len(cfg.channel_mult) - 1}")
        mc = cfg.model_channels
        emb = timestep_embedding(t_N, mc)
        emb = Dense(4 * mc, dtype=dtype, kernel_init=TORCH_INIT, name="time_fc1")(emb)
        emb = Dense(4 * mc, dtype=dtype, kernel_init=TORCH_INIT, name="time_fc2")(nn.silu(emb))
        y = y_mask = None
        if cfg.conditioning == "class":
            if "label" not in cond:
                raise ValueError(f"conditioning='class' needs cond['label'] (int32 [N]); got keys {sorted(cond)}")
            labels = jnp.where(drop_mask(self, cond, N, cfg.class_dropout, train), cfg.num_classes,
                               jnp.asarray(cond["label"], jnp.int32))
            emb = emb + nn.Embed(cfg.num_classes + 1, 4 * mc, name="label_emb")(labels).astype(dtype)
        elif cfg.conditioning == "text":
            drop = drop_mask(self, cond, N, cfg.caption_dropout, train)
            y, y_mask = CaptionEmbedder(cfg.text_encoder, cfg.text_len, cfg.context_dim, cfg.encoder_width,
                                        cfg.encoder_depth, cfg.encoder_heads, cfg.remat, True,
                                        dtype=dtype, name="caption")(cond, drop)
        elif cfg.conditioning != "none":
            raise ConfigError(f"unknown conditioning {cfg.conditioning!r}; valid: {', '.join(CONDITIONINGS)}")

        res_cls = remat_block(ResBlock, cfg.remat)
        attn_cls = remat_block(AttnBlock, cfg.remat)

        def res(ch, name):
            return res_cls(ch, dropout=cfg.dropout, use_scale_shift_norm=cfg.use_scale_shift_norm,
                           deterministic=not train, dtype=dtype, name=name)

        def attn(ch, name):
            heads = ch // cfg.num_head_channels if cfg.num_head_channels > 0 else cfg.num_heads
            return attn_cls(max(heads, 1), dtype=dtype, name=name)

        h = conv(mc, dtype, "in_conv")(x_NHWC.astype(dtype))
        skips = [h]
        res_px = H
        for level, mult in enumerate(cfg.channel_mult):
            for i in range(cfg.num_res_blocks):
                h = res(mult * mc, f"down_{level}_{i}")(h, emb)
                if res_px in cfg.attention_resolutions:
                    h = attn(mult * mc, f"down_{level}_{i}_attn")(h, y, y_mask)
                skips.append(h)
            if level != len(cfg.channel_mult) - 1:
                h = conv(h.shape[-1], dtype, f"down_{level}_downsample", stride=2)(h)
                res_px //= 2
                skips.append(h)
        ch = h.shape[-1]
        h = res(ch, "mid_0")(h, emb)
        h = attn(ch, "mid_attn")(h, y, y_mask)
        h = res(ch, "mid_1")(h, emb)
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            for i in range(cfg.num_res_blocks + 1):
                h = res(mult * mc, f"up_{level}_{i}")(jnp.concatenate([h, skips.pop()], axis=-1), emb)
                if res_px in cfg.attention_resolutions:
                    h = attn(mult * mc, f"up_{level}_{i}_attn")(h, y, y_mask)
            if level:
                h = jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2)
                h = conv(h.shape[-1], dtype, f"up_{level}_upsample")(h)
                res_px *= 2
        h = nn.silu(group_norm(h.shape[-1], dtype, "out_norm")(h))
        out_c = 2 * C_in if cfg.learn_sigma else C_in
        return conv(out_c, dtype, "out_conv", zero=True)(h).astype(jnp.float32)


def make_config(cfg: Mapping[str, Any]) -> Config:
    """Config from a `model` section dict (optional "size" from SIZES plus overrides)."""
    from jaxmodels.models import sized_config

    config = sized_config(Config, SIZES, cfg, "unet")
    check_conditioning("unet", config.conditioning, config.text_encoder)
    return config


def build(cfg: Mapping[str, Any]) -> UNet:
    """The U-Net module for a config's `model` section (without "name")."""
    return UNet(make_config(cfg))
