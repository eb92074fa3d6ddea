"""The one attention function every family calls, plus the KV-cache helpers.

Shapes: q_BTHD [batch, query len, heads, head dim]; k_BSKD / v_BSKD [batch, key len,
kv heads, head dim] with heads % kv heads == 0 (grouped-query attention when K < H).

`jax.nn.dot_product_attention` picks cuDNN flash attention on GPU (when the dtype and
shapes allow) and an XLA softmax(QK^T)V elsewhere. Decoding with a cache needs queries at
absolute positions `q_offset ...` attending to a cache whose first `kv_len` slots are
valid; that case is expressed with an explicit boolean mask.
"""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp


def attention(
    q_BTHD: jax.Array,
    k_BSKD: jax.Array,
    v_BSKD: jax.Array,
    *,
    causal: bool = True,
    q_offset: Optional[jax.Array] = None,
    kv_len: Optional[jax.Array] = None,
    window: Optional[int] = None,
    scale: Optional[float] = None,
    implementation: Optional[str] = None,
) -> jax.Array:
    """Scaled dot-product attention; returns out_BTHD in q's dtype.

    causal: query i attends to keys j <= i (+ q_offset when decoding from a cache).
    q_offset: absolute position of the first query (scalar int array); set when the keys
      are a KV cache. Queries then sit at q_offset + arange(T).
    kv_len: number of valid key slots (scalar); slots >= kv_len are masked. Defaults to all.
    window: sliding-window size (Mistral): key j is visible to query i iff i - j < window.
    implementation: None (let JAX choose), "xla" or "cudnn".
    """
    T, S = q_BTHD.shape[1], k_BSKD.shape[1]
    if q_offset is None and kv_len is None:
        # Aligned self-attention: the fast path (cuDNN flash attention on GPU).
        local = None if window is None else (window - 1, 0)
        return jax.nn.dot_product_attention(
            q_BTHD, k_BSKD, v_BSKD, scale=scale, is_causal=causal,
            local_window_size=local, implementation=implementation)
    offset = jnp.asarray(0 if q_offset is None else q_offset, jnp.int32)
    q_pos_T = offset + jnp.arange(T, dtype=jnp.int32)
    k_pos_S = jnp.arange(S, dtype=jnp.int32)
    mask_TS = jnp.ones((T, S), bool)
    if kv_len is not None:
        mask_TS &= k_pos_S[None, :] < kv_len
    if causal:
        mask_TS &= k_pos_S[None, :] <= q_pos_T[:, None]
    if window is not None:
        mask_TS &= q_pos_T[:, None] - k_pos_S[None, :] < window
    return jax.nn.dot_product_attention(
        q_BTHD, k_BSKD, v_BSKD, mask=mask_TS[None, None], scale=scale,
        implementation=implementation)


def init_kv_cache(batch: int, max_len: int, kv_heads: int, head_dim: int,
                  dtype=jnp.float32) -> dict:
    """An empty per-layer KV cache: {"k", "v"} of shape [B, max_len, K, D]."""
    shape = (batch, max_len, kv_heads, head_dim)
    return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}


def update_kv_cache(cache: dict, k_BTKD: jax.Array, v_BTKD: jax.Array,
                    pos: jax.Array) -> dict:
    """Writes T new keys/values at absolute position `pos`; returns the new cache."""
    pos = jnp.asarray(pos, jnp.int32)
    zero = jnp.zeros((), jnp.int32)
    idx = (zero, pos, zero, zero)
    return {
        "k": jax.lax.dynamic_update_slice(cache["k"], k_BTKD.astype(cache["k"].dtype), idx),
        "v": jax.lax.dynamic_update_slice(cache["v"], v_BTKD.astype(cache["v"].dtype), idx),
    }
