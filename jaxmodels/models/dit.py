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
from typing import Any, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxmodels.config import ConfigError
from jaxmodels.layers.attention import attention, attention_einsum
from jaxmodels.layers.embeddings import TimestepEmbedder, sincos_2d
from jaxmodels.layers.mlp import GeluMLP
from jaxmodels.layers.norms import LayerNorm
from jaxmodels.layers.stack import remat_block, scan_blocks
from jaxmodels.models.text_encoder import PAD_ID, TextEncoder

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
    learn_sigma: bool = True
    conditioning: str = "class"   # "class" | "text" | "none"
    # PixArt text conditioning.
    text_encoder: str = "bytes"   # "bytes" (models/text_encoder.py) | "precomputed" (T5/CLIP features)
    text_len: int = 120           # caption tokens (PixArt: 120 T5 tokens)
    text_dim: int = 4096          # width of precomputed features (T5-XXL: 4096)
    caption_dropout: float = 0.1
    encoder_width: int = 256      # bytes encoder
    encoder_depth: int = 4
    encoder_heads: int = 4
    dtype: str = "float32"        # compute dtype; params stay f32
    remat: str = "none"           # jaxmodels.layers.stack.REMAT_POLICIES
    scan_layers: bool = True


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

CONDITIONINGS = ("class", "text", "none")
TEXT_ENCODERS = ("bytes", "precomputed")


def modulate(x_BTD: jax.Array, shift_BD: jax.Array, scale_BD: jax.Array) -> jax.Array:
    """adaLN: x * (1 + scale) + shift, per example."""
    return x_BTD * (1.0 + scale_BD[:, None, :]) + shift_BD[:, None, :]


class MultiHeadAttention(nn.Module):
    """Multi-head self- or cross-attention built on jaxmodels.layers.attention.

    Self-attention (context_BSE None): one fused qkv Dense, as DiT / timm. Cross-attention:
    q from x, k/v from the context (PixArt's q_linear / kv_linear). mask_BS (True = key
    visible) restricts the keys, e.g. to real caption tokens. out_init: the output
    projection's init (zeros for PixArt's cross-attention and the U-Net's attention).
    """
    num_heads: int
    dtype: Any = jnp.float32
    kernel_init: Any = XAVIER
    out_init: Any = XAVIER

    @nn.compact
    def __call__(self, x_BTD: jax.Array, context_BSE: Optional[jax.Array] = None,
                 mask_BS: Optional[jax.Array] = None) -> jax.Array:
        B, T, D = x_BTD.shape
        H = self.num_heads
        if D % H:
            raise ConfigError(f"width {D} is not divisible by num_heads {H}")
        dense = lambda n, name: nn.Dense(n, dtype=self.dtype, kernel_init=self.kernel_init,  # noqa: E731
                                         bias_init=ZEROS, name=name)
        if context_BSE is None:
            qkv = dense(3 * D, "qkv")(x_BTD).reshape(B, T, 3, H, D // H)
            q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        else:
            S = context_BSE.shape[1]
            q = dense(D, "q")(x_BTD).reshape(B, T, H, D // H)
            kv = dense(2 * D, "kv")(context_BSE.astype(self.dtype)).reshape(B, S, 2, H, D // H)
            k, v = kv[:, :, 0], kv[:, :, 1]
        if mask_BS is None:
            out_BTHD = attention(q, k, v, causal=False)
        else:
            # A per-example key mask: attention() takes only positional masks, so use its
            # explicit einsum path, whose mask broadcasts against logits [B, K, G, T, S].
            out_BTHD = attention_einsum(q, k, v, mask_BS[:, None, None, None, :])
        return nn.Dense(D, dtype=self.dtype, kernel_init=self.out_init, bias_init=ZEROS,
                        name="proj")(out_BTHD.reshape(B, T, D))


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
            mod = nn.Dense(6 * D, dtype=self.dtype, kernel_init=ZEROS, bias_init=ZEROS,
                           name="adaLN_modulation")(nn.silu(c))
            mod_N6D = mod.reshape(N, 6, D)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = [
            mod_N6D[:, i].astype(self.dtype) for i in range(6)]
        norm = lambda name: LayerNorm(eps=1e-6, use_scale=False, use_bias=False,  # noqa: E731
                                      dtype=self.dtype, name=name)
        h = modulate(norm("norm1")(x), shift_msa, scale_msa)
        x = x + gate_msa[:, None] * MultiHeadAttention(self.num_heads, dtype=self.dtype, name="attn")(h)
        if self.text:
            x = x + MultiHeadAttention(self.num_heads, dtype=self.dtype, out_init=ZEROS,
                                       name="cross_attn")(x, context_BSE=y, mask_BS=y_mask)
        h = modulate(norm("norm2")(x), shift_mlp, scale_mlp)
        h = GeluMLP(hidden=int(D * self.mlp_ratio), gelu="tanh", dtype=self.dtype,
                    kernel_init=XAVIER, name="mlp")(h)
        return x + gate_mlp[:, None] * h, None


class CaptionEmbedder(nn.Module):
    """Caption features -> [N, L, out_dim] tokens for cross-attention (PixArt, U-Net).

    Reads cond["text_tokens"] through the byte TextEncoder ("bytes") or cond["text_emb"]
    as given ("precomputed"), replaces dropped captions (drop_N) by a learned null
    embedding [text_len, E] with every token visible, then projects with PixArt's
    Dense -> GELU(tanh) -> Dense. Returns (y_NLD, mask_NL).
    """
    text_encoder: str
    text_len: int
    out_dim: int
    encoder_width: int = 256
    encoder_depth: int = 4
    encoder_heads: int = 4
    remat: str = "none"
    scan_layers: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, cond: Mapping[str, jax.Array], drop_N: jax.Array):
        if self.text_encoder == "bytes":
            if "text_tokens" not in cond:
                raise ValueError("text conditioning with text_encoder='bytes' needs cond['text_tokens']")
            tokens = cond["text_tokens"]
            mask = cond.get("text_mask", tokens != PAD_ID)
            feats = TextEncoder(width=self.encoder_width, depth=self.encoder_depth,
                                num_heads=self.encoder_heads, dtype=self.dtype, remat=self.remat,
                                scan_layers=self.scan_layers, name="text_encoder")(tokens, mask)
        elif self.text_encoder == "precomputed":
            if "text_emb" not in cond:
                raise ValueError("text conditioning with text_encoder='precomputed' needs cond['text_emb']")
            feats = cond["text_emb"]
            mask = cond.get("text_mask", jnp.ones(feats.shape[:2], bool))
        else:
            raise ConfigError(f"unknown text_encoder {self.text_encoder!r}; valid: {', '.join(TEXT_ENCODERS)}")
        N, L, E = feats.shape
        if L > self.text_len:
            raise ValueError(f"captions have {L} tokens > text_len {self.text_len}")
        null_LE = self.param("y_null", nn.initializers.normal(E ** -0.5), (self.text_len, E))[:L]
        feats = jnp.where(drop_N[:, None, None], null_LE[None].astype(feats.dtype), feats)
        mask = jnp.where(drop_N[:, None], True, jnp.asarray(mask, bool))
        init = nn.initializers.normal(0.02)
        h = nn.Dense(self.out_dim, dtype=self.dtype, kernel_init=init, name="fc1")(feats.astype(self.dtype))
        h = nn.gelu(h, approximate=True)
        y = nn.Dense(self.out_dim, dtype=self.dtype, kernel_init=init, name="fc2")(h)
        return y, mask


def drop_mask(module: nn.Module, cond: Mapping[str, jax.Array], N: int, rate: float,
              train: bool) -> jax.Array:
    """bool[N]: cond["drop"] (forced null condition) OR, when training, Bernoulli(rate)
    drawn from the module's "dropout" rng (classifier-free guidance training)."""
    drop = jnp.asarray(cond["drop"], bool) if "drop" in cond else jnp.zeros((N,), bool)
    if train and rate > 0:
        drop = drop | jax.random.bernoulli(module.make_rng("dropout"), rate, (N,))
    return drop


class DiT(nn.Module):
    """The DiT / PixArt-alpha backbone; see the module docstring for the call contract."""
    cfg: Config

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
        x = nn.Dense(D, dtype=dtype, kernel_init=XAVIER, bias_init=ZEROS, name="x_embedder")(
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
            y_emb = nn.Embed(cfg.num_classes + 1, D, embedding_init=nn.initializers.normal(0.02),
                             name="y_embedder")(labels)
            c = t_emb + y_emb.astype(dtype)
        elif text:
            drop = drop_mask(self, cond, N, cfg.caption_dropout, train)
            y, y_mask = CaptionEmbedder(
                cfg.text_encoder, cfg.text_len, D, cfg.encoder_width, cfg.encoder_depth,
                cfg.encoder_heads, cfg.remat, cfg.scan_layers, dtype=dtype, name="y_embedder")(cond, drop)
            c = t_emb
        elif cfg.conditioning == "none":
            c = t_emb
        else:
            raise ConfigError(f"unknown conditioning {cfg.conditioning!r}; valid: {', '.join(CONDITIONINGS)}")

        # DiT: each block modulates from c. PixArt (adaLN-single): one shared Dense(6D).
        block_c = (nn.Dense(6 * D, dtype=dtype, kernel_init=nn.initializers.normal(0.02),
                            name="t_block")(nn.silu(t_emb)) if text else c)
        kwargs = dict(num_heads=cfg.num_heads, mlp_ratio=cfg.mlp_ratio, text=text, dtype=dtype)
        if cfg.scan_layers:
            x, _ = scan_blocks(DiTBlock, cfg.depth, cfg.remat, name="blocks",
                               in_axes=(nn.broadcast, nn.broadcast, nn.broadcast),
                               **kwargs)(x, block_c, y, y_mask)
        else:
            block_cls = remat_block(DiTBlock, cfg.remat)
            for i in range(cfg.depth):
                x, _ = block_cls(name=f"blocks_{i}", **kwargs)(x, block_c, y, y_mask)

        # Final layer: adaLN-modulated norm then a zero-init linear read-out per token.
        if text:
            table = self.param("final_scale_shift_table", nn.initializers.normal(D ** -0.5), (2, D))
            mod_N2D = table[None] + t_emb[:, None, :].astype(jnp.float32)
        else:
            mod_N2D = nn.Dense(2 * D, dtype=dtype, kernel_init=ZEROS, bias_init=ZEROS,
                               name="final_adaLN_modulation")(nn.silu(c)).reshape(N, 2, D)
        shift, scale = mod_N2D[:, 0].astype(dtype), mod_N2D[:, 1].astype(dtype)
        x = modulate(LayerNorm(eps=1e-6, use_scale=False, use_bias=False, dtype=dtype,
                               name="final_norm")(x), shift, scale)
        out_c = C * 2 if cfg.learn_sigma else C
        x = nn.Dense(p * p * out_c, dtype=dtype, kernel_init=ZEROS, bias_init=ZEROS,
                     name="final_linear")(x)
        # Unpatchify (patch-internal order (p, p, C), as DiT's "nhwpqc").
        x = x.reshape(N, h, w, p, p, out_c).transpose(0, 1, 3, 2, 4, 5).reshape(N, H, W, out_c)
        return x.astype(jnp.float32)


def make_config(cfg: Mapping[str, Any]) -> Config:
    """Config from a `model` section dict (optional "size" from SIZES plus overrides)."""
    from jaxmodels.models import sized_config

    config = sized_config(Config, SIZES, cfg, "dit")
    if config.conditioning not in CONDITIONINGS:
        raise ConfigError(f"unknown dit conditioning {config.conditioning!r}; valid: {', '.join(CONDITIONINGS)}")
    if config.text_encoder not in TEXT_ENCODERS:
        raise ConfigError(f"unknown dit text_encoder {config.text_encoder!r}; valid: {', '.join(TEXT_ENCODERS)}")
    return config


def build(cfg: Mapping[str, Any]) -> DiT:
    """The DiT module for a config's `model` section (without "name")."""
    return DiT(make_config(cfg))
