"""The T5 encoder (T5 v1.1 / Flan-T5 layout: gated-GELU feed-forward, no biases), for
caption embeddings as PixArt-alpha uses T5-XXL's.

tokens [B, L] -> shared embedding -> num_layers x [RMSNorm -> self-attention (+ relative
position bias, computed once by the first layer and shared by all) -> residual; RMSNorm ->
wo(gelu_tanh(wi_0 x) * wi_1 x) (or wo(relu(wi x)) for the original T5) -> residual] ->
final RMSNorm. T5 does not scale attention logits by 1/sqrt(d); its initialisation folds
that in. Padding: mask [B, L] (True = real token) hides padded keys.

apply({"params": p}, tokens_BL, mask_BL) -> hidden f32 [B, L, d_model].
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxmodels.layers.norms import RMSNorm


@dataclasses.dataclass(frozen=True)
class Config:
    """Names of transformers' T5Config."""
    vocab_size: int = 32128
    d_model: int = 4096
    d_kv: int = 64
    d_ff: int = 10240
    num_layers: int = 24
    num_heads: int = 64
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    layer_norm_epsilon: float = 1e-6
    gated: bool = True          # feed_forward_proj "gated-gelu" (v1.1, Flan) vs "relu" (original T5)
    dtype: str = "float32"


SIZES = {
    # PixArt-alpha's caption encoder (google/t5-v1_1-xxl encoder: 4.76B parameters).
    "t5-v1_1-xxl": {},
    "flan-t5-base": dict(d_model=768, d_kv=64, d_ff=2048, num_layers=12, num_heads=12),
    "t5-tiny": dict(vocab_size=64, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4,
                    relative_attention_num_buckets=8, relative_attention_max_distance=20),
}


def relative_position_bucket(relative_BLS: jax.Array, num_buckets: int, max_distance: int) -> jax.Array:
    """T5's bidirectional buckets of key - query offsets: half the buckets per direction,
    exact below num_buckets / 4, logarithmic up to max_distance, clipped beyond."""
    num_buckets //= 2
    bucket = (relative_BLS > 0).astype(jnp.int32) * num_buckets
    distance = jnp.abs(relative_BLS)
    max_exact = num_buckets // 2
    log_ratio = jnp.log(jnp.maximum(distance, 1).astype(jnp.float32) / max_exact) / math.log(max_distance / max_exact)
    large = max_exact + (log_ratio * (num_buckets - max_exact)).astype(jnp.int32)
    large = jnp.minimum(large, num_buckets - 1)
    return bucket + jnp.where(distance < max_exact, distance, large)


class T5Block(nn.Module):
    cfg: Config

    @nn.compact
    def __call__(self, x_BLD: jax.Array, bias_BHLS: jax.Array) -> jax.Array:
        cfg, dtype = self.cfg, jnp.dtype(self.cfg.dtype)
        B, L, _ = x_BLD.shape
        H, K = cfg.num_heads, cfg.d_kv
        dense = lambda n, name: nn.Dense(n, use_bias=False, dtype=dtype, name=name)  # noqa: E731
        h = RMSNorm(cfg.layer_norm_epsilon, dtype=dtype, name="attn_norm")(x_BLD)
        q, k, v = (dense(H * K, n)(h).reshape(B, L, H, K) for n in ("q", "k", "v"))
        logits = jnp.einsum("blhk,bshk->bhls", q, k, preferred_element_type=jnp.float32) + bias_BHLS
        probs = jax.nn.softmax(logits, axis=-1).astype(dtype)
        out = jnp.einsum("bhls,bshk->blhk", probs, v).reshape(B, L, H * K)
        x_BLD = x_BLD + dense(cfg.d_model, "o")(out)
        h = RMSNorm(cfg.layer_norm_epsilon, dtype=dtype, name="ff_norm")(x_BLD)
        if cfg.gated:
            h = jax.nn.gelu(dense(cfg.d_ff, "wi_0")(h), approximate=True) * dense(cfg.d_ff, "wi_1")(h)
        else:
            h = nn.relu(dense(cfg.d_ff, "wi")(h))
        return x_BLD + dense(cfg.d_model, "wo")(h)


class T5Encoder(nn.Module):
    cfg: Config

    @nn.compact
    def __call__(self, tokens_BL: jax.Array, mask_BL: jax.Array | None = None) -> jax.Array:
        cfg, dtype = self.cfg, jnp.dtype(self.cfg.dtype)
        B, L = tokens_BL.shape
        x = nn.Embed(cfg.vocab_size, cfg.d_model, dtype=dtype, name="embed")(tokens_BL)
        pos = jnp.arange(L)
        buckets = relative_position_bucket(pos[None, :] - pos[:, None], cfg.relative_attention_num_buckets,
                                           cfg.relative_attention_max_distance)
        bias = nn.Embed(cfg.relative_attention_num_buckets, cfg.num_heads, name="relative_bias")(buckets)
        bias_BHLS = jnp.broadcast_to(bias.transpose(2, 0, 1)[None].astype(jnp.float32), (B, cfg.num_heads, L, L))
        if mask_BL is not None:
            bias_BHLS = bias_BHLS + jnp.where(mask_BL[:, None, None, :], 0.0, jnp.finfo(jnp.float32).min)
        for i in range(cfg.num_layers):
            x = T5Block(cfg, name=f"block_{i}")(x, bias_BHLS)
        return RMSNorm(cfg.layer_norm_epsilon, dtype=dtype, name="final_norm")(x).astype(jnp.float32)


def make_config(cfg: Mapping[str, Any]) -> Config:
    from jaxmodels.models import sized_config

    return sized_config(Config, SIZES, cfg, "t5")


def build(cfg: Mapping[str, Any]) -> T5Encoder:
    return T5Encoder(make_config(cfg))
