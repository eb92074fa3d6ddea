"""DiT (Peebles & Xie, 2023) and PixArt-alpha (Chen et al., 2023) diffusion transformers.

Images are NHWC. The model patchifies x_t into (H/p)(W/p) tokens, adds frozen 2-D sin-cos
positions, runs `depth` transformer blocks modulated by the timestep (and class) embedding,
and unpatchifies a per-token linear read-out back to [N, H, W, C] (2C with learn_sigma:
the eps prediction then iDDPM's variance interpolation v).

conditioning="class"  DiT: c = t_emb + label_emb (label num_classes is the null class);
                      adaLN-Zero blocks whose modulation Dense is zero-initialised, so
                      every block and the final layer start as the identity / zero.
conditioning="text"   PixArt-alpha: self-attention, then cross-attention to the caption
                      tokens (output projection zero-init), then the MLP; adaLN-single:
                      one shared Dense(6D) of the time embedding plus a per-block learned
                      [6, D] table; captions dropped to a learned null embedding.
conditioning="none"   unconditional DiT (c = t_emb).

Call: model.apply({"params": p}, x_NHWC, t_N, cond, train=False, rngs={"dropout": r})
  cond: {"label": int32[N]}                                        (class)
        {"text_tokens": int32[N, L], "text_mask": bool[N, L]}      (text, bytes encoder)
        {"text_emb": f32[N, L, text_dim], "text_mask": bool[N, L]} (text, precomputed)
  Optional cond["drop"]: bool[N] forces the null condition (classifier-free guidance).
  With train=True, labels / captions are also dropped at class_dropout / caption_dropout
  using the "dropout" rng.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional, Union

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxmodels.config import ConfigError
from jaxmodels.layers import adapters
from jaxmodels.layers.conditioning import CONDITIONINGS, CaptionEmbedder, check_conditioning, drop_mask
from jaxmodels.layers.dense import Dense
from jaxmodels.layers.embeddings import TimestepEmbedder, sincos_2d
from jaxmodels.layers.mha import MultiHeadAttention
from jaxmodels.layers.mlp import GeluMLP
from jaxmodels.layers.stack import layer_unroll, scan_blocks, scans

XAVIER = nn.initializers.xavier_uniform()
ZEROS = nn.initializers.zeros


@dataclasses.dataclass(frozen=True)
class Config:
    """Every DiT / PixArt hyper-parameter; named sizes in SIZES."""
    input_size: int = 32          # latent / image side the size table refers to
    patch_size: int = 2
    in_channels: int = 4
    hidden_size: int = 384
    depth: int = 12
    num_heads: int = 6
    mlp_ratio: float = 4.0
    num_classes: int = 1000
    class_dropout: float = 0.1
    # Init std of the class-embedding table. DiT: 0.02, i.e. 1/13 of the timestep embedding
    # it is added to, which a 400k-step run outgrows; a 20-minute run does not (the CPU
    # recipe uses 1.0 so the label is as loud as the time from step 0).
    class_embed_std: float = 0.02
    learn_sigma: bool = True
    conditioning: str = "class"   # "class" | "text" | "none"
    # PixArt text conditioning.
    text_encoder: str = "bytes"   # "bytes" | "words" (layers/text_encoder.py) | "precomputed" (T5/CLIP features)
    text_len: int = 120           # caption tokens (PixArt: 120 T5 tokens; "words": word tokens)
    text_dim: int = 4096          # width of precomputed features (T5-XXL: 4096)
    caption_dropout: float = 0.1
    encoder_width: int = 256      # bytes encoder
    encoder_depth: int = 4
    encoder_heads: int = 4
    dtype: str = "float32"        # compute dtype; params stay f32
    remat: str = "none"           # jaxmodels.layers.stack.REMAT_POLICIES
    scan_layers: Union[bool, str] = "auto"  # auto: unrolled on a CPU (layers/stack.layer_unroll)
    adapters: Any = None          # LoRA / QLoRA / state tuning (jaxmodels.layers.adapters)


_DIT = {
    "s": dict(hidden_size=384, depth=12, num_heads=6),
    "b": dict(hidden_size=768, depth=12, num_heads=12),
    "l": dict(hidden_size=1024, depth=24, num_heads=16),
    "xl": dict(hidden_size=1152, depth=28, num_heads=16),
}
SIZES: dict[str, dict] = {}
for _name, _dims in _DIT.items():
    for _p in (2, 4, 8):
        # ImageNet 256x256 through the SD VAE: 32x32x4 latents, 1000 classes.
        SIZES[f"dit-{_name}/{_p}"] = dict(input_size=32, patch_size=_p, in_channels=4,
                                          num_classes=1000, conditioning="class", **_dims)
# PixArt-alpha: the small ones learn their own byte-level text encoder (offline default);
# pixart-xl/2 is the paper's 256px model reading precomputed T5-XXL features (4096 x 120).
SIZES["pixart-s/2"] = dict(input_size=32, patch_size=2, in_channels=4, conditioning="text",
                           text_encoder="bytes", text_len=120, **_DIT["s"])
SIZES["pixart-b/2"] = dict(input_size=32, patch_size=2, in_channels=4, conditioning="text",
                           text_encoder="bytes", text_len=120, **_DIT["b"])
SIZES["pixart-xl/2"] = dict(input_size=32, patch_size=2, in_channels=4, conditioning="text",
                            text_encoder="precomputed", text_len=120, text_dim=4096, **_DIT["xl"])


def norm_modulate(x_BTD: jax.Array, shift_BD: jax.Array, scale_BD: jax.Array, dtype) -> jax.Array:
    """adaLN: LayerNorm(x) * (1 + scale) + shift per example, with DiT's parameter-free
    LayerNorm (eps 1e-6; the modulate in the activation dtype), through
    kernels.dispatch.norm: the same jnp ops by default, one fused Pallas kernel with
    config kernels.norm=pallas."""
    from jaxmodels.kernels import dispatch
    return dispatch.norm(x_BTD, kind="layer", eps=1e-6, shift_BC=shift_BD, scale_BC=scale_BD, dtype=dtype)


class DiTBlock(nn.Module):
    """adaLN-Zero block (DiT) or, with text=True, PixArt's adaLN-single + cross-attention block.

    __call__(x [N,T,D], c, y [N,L,D] | None, y_mask [N,L] | None) -> (x, None):
    c is DiT's conditioning vector [N, D] (the block owns a zero-init Dense(6D) of it) or
    PixArt's shared time modulation t0 [N, 6D] (the block adds its learned [6, D] table).
    """
    num_heads: int
    mlp_ratio: float = 4.0
    text: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, c, y, y_mask):
        N, T, D = x.shape
        if self.text:
            table = self.param("scale_shift_table", nn.initializers.normal(D ** -0.5), (6, D))
            mod_N6D = table[None] + c.reshape(N, 6, D).astype(jnp.float32)
        else:
            mod = Dense(6 * D, dtype=self.dtype, kernel_init=ZEROS, bias_init=ZEROS,
                        name="adaLN_modulation")(nn.silu(c))
            mod_N6D = mod.reshape(N, 6, D)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = [
            mod_N6D[:, i].astype(self.dtype) for i in range(6)]
        h = norm_modulate(x, shift_msa, scale_msa, self.dtype)
        x = x + gate_msa[:, None] * MultiHeadAttention(self.num_heads, dtype=self.dtype, name="attn")(h)
        if self.text:
            x = x + MultiHeadAttention(self.num_heads, dtype=self.dtype, out_init=ZEROS,
                                       name="cross_attn")(x, context_BSE=y, mask_BS=y_mask)
        h = norm_modulate(x, shift_mlp, scale_mlp, self.dtype)
        h = GeluMLP(hidden=int(D * self.mlp_ratio), gelu="tanh", dtype=self.dtype,
                    kernel_init=XAVIER, name="mlp")(h)
        return x + gate_mlp[:, None] * h, None


class DiT(nn.Module):
    """The DiT / PixArt-alpha backbone; see the module docstring for the call contract."""
    cfg: Config

    @adapters.scoped
    @nn.compact
    def __call__(self, x_NHWC: jax.Array, t_N: jax.Array, cond: Optional[Mapping[str, jax.Array]] = None,
                 train: bool = False) -> jax.Array:
        cfg = self.cfg
        dtype = jnp.dtype(cfg.dtype)
        cond = {} if cond is None else cond
        N, H, W, C = x_NHWC.shape
        p, D = cfg.patch_size, cfg.hidden_size
        if H % p or W % p:
            raise ValueError(f"image {H}x{W} is not divisible by patch_size {p}")
        h, w = H // p, W // p
        # Patchify: a stride-p conv is a Dense on flattened (p, p, C) patches.
        patches = x_NHWC.reshape(N, h, p, w, p, C).transpose(0, 1, 3, 2, 4, 5).reshape(N, h * w, p * p * C)
        x = Dense(D, dtype=dtype, kernel_init=XAVIER, bias_init=ZEROS, name="x_embedder")(
            patches.astype(dtype))
        x = x + jnp.asarray(sincos_2d(h, w, D), dtype)[None]
        t_emb = TimestepEmbedder(D, dtype=dtype, name="t_embedder")(t_N)

        y = y_mask = None
        text = cfg.conditioning == "text"
        if cfg.conditioning == "class":
            if "label" not in cond:
                raise ValueError("conditioning='class' needs cond['label'] (int32 [N]); "
                                 f"got keys {sorted(cond)}")
            labels = jnp.asarray(cond["label"], jnp.int32)
            drop = drop_mask(self, cond, N, cfg.class_dropout, train)
            labels = jnp.where(drop, cfg.num_classes, labels)
            # Row num_classes is the null class (kept even with class_dropout = 0, for CFG).
            y_emb = nn.Embed(cfg.num_classes + 1, D,
                             embedding_init=nn.initializers.normal(cfg.class_embed_std),
                             name="y_embedder")(labels)
            c = t_emb + y_emb.astype(dtype)
        elif text:
            drop = drop_mask(self, cond, N, cfg.caption_dropout, train)
            y, y_mask = CaptionEmbedder(
                cfg.text_encoder, cfg.text_len, D, cfg.encoder_width, cfg.encoder_depth,
                cfg.encoder_heads, cfg.remat, scans(cfg.scan_layers) is not False, dtype=dtype,
                name="y_embedder")(cond, drop)  # the text encoder's layout follows scan_layers; auto scans it
            c = t_emb
        elif cfg.conditioning == "none":
            c = t_emb
        else:
            raise ConfigError(f"unknown conditioning {cfg.conditioning!r}; valid: {', '.join(CONDITIONINGS)}")

        # DiT: each block modulates from c. PixArt (adaLN-single): one shared Dense(6D).
        block_c = (Dense(6 * D, dtype=dtype, kernel_init=nn.initializers.normal(0.02),
                         name="t_block")(nn.silu(t_emb)) if text else c)
        kwargs = dict(num_heads=cfg.num_heads, mlp_ratio=cfg.mlp_ratio, text=text, dtype=dtype)
        # scan_layers=False unrolls the same scan (stacked params either way), as GPT does.
        unroll = layer_unroll(cfg.scan_layers, cfg.depth)
        x, _ = scan_blocks(DiTBlock, cfg.depth, cfg.remat, name="blocks", unroll=unroll,
                           in_axes=(nn.broadcast, nn.broadcast, nn.broadcast),
                           **kwargs)(x, block_c, y, y_mask)

        # Final layer: adaLN-modulated norm then a zero-init linear read-out per token.
        if text:
            table = self.param("final_scale_shift_table", nn.initializers.normal(D ** -0.5), (2, D))
            mod_N2D = table[None] + t_emb[:, None, :].astype(jnp.float32)
        else:
            mod_N2D = Dense(2 * D, dtype=dtype, kernel_init=ZEROS, bias_init=ZEROS,
                            name="final_adaLN_modulation")(nn.silu(c)).reshape(N, 2, D)
        shift, scale = mod_N2D[:, 0].astype(dtype), mod_N2D[:, 1].astype(dtype)
        x = norm_modulate(x, shift, scale, dtype)
        out_c = C * 2 if cfg.learn_sigma else C
        x = Dense(p * p * out_c, dtype=dtype, kernel_init=ZEROS, bias_init=ZEROS,
                  name="final_linear")(x)
        # Unpatchify (patch-internal order (p, p, C), as DiT's "nhwpqc").
        x = x.reshape(N, h, w, p, p, out_c).transpose(0, 1, 3, 2, 4, 5).reshape(N, H, W, out_c)
        return x.astype(jnp.float32)


def make_config(cfg: Mapping[str, Any]) -> Config:
    """Config from a `model` section dict (optional "size" from SIZES plus overrides)."""
    from jaxmodels.models import sized_config

    config = sized_config(Config, SIZES, cfg, "dit")
    check_conditioning("dit", config.conditioning, config.text_encoder)
    return config


def build(cfg: Mapping[str, Any]) -> DiT:
    """The DiT module for a config's `model` section (without "name")."""
    return DiT(make_config(cfg))
