"""The one attention function every family calls, plus the KV-cache helpers.

Shapes: q_BTHD [batch, query len, heads, head dim]; k_BSKD / v_BSKD [batch, key len,
kv heads, head dim] with heads % kv heads == 0 (grouped-query attention when K < H).

`jax.nn.dot_product_attention` picks cuDNN flash attention on GPU (when the dtype and
shapes allow) and an XLA softmax(QK^T)V elsewhere. Decoding with a cache needs queries at
absolute positions `q_offset ...` attending to a cache whose first `kv_len` slots are
valid; that case is expressed with an explicit boolean mask.

Dropout on the attention probabilities (GPT-2's attn_pdrop, nanoGPT's dropout) cannot be
expressed through jax.nn.dot_product_attention, so training with dropout_rate > 0 takes
the explicit einsum + f32 softmax path (`attention_einsum`), which also serves as the
reference the tests compare against. On XLA:CPU the einsum path is also the faster one,
since it lays q/k/v out head-major before the batched matmuls: nanoGPT's shakespeare_char
attention (64x256x6x64, fwd + bwd) took 223 ms against 330 ms through
jax.nn.dot_product_attention, so `implementation=None` on a CPU backend means einsum.
With config `kernels.attention=pallas` the aligned, dropout-free case runs the Pallas flash
attention of jaxmodels/kernels/attention.py instead. On a CPU, "auto" (the default)
sends the aligned f32 case, dropout included, to the C++ custom call of
jaxmodels/kernels/cpu_attention.py (2-3x faster than the einsum path, forward + backward;
docs/cpu_notes.md); the einsum path stays the reference, `kernels.attention=xla` picks it, and
it is the fallback where the kernel cannot be built.
"""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from jaxmodels.layers.dropout import dropout


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
    dropout_rate: float = 0.0,
    dropout_rng: Optional[jax.Array] = None,
) -> jax.Array:
    """Scaled dot-product attention; returns out_BTHD in q's dtype.

    causal: query i attends to keys j <= i (+ q_offset when decoding from a cache).
    q_offset: absolute position of the first query (scalar int array); set when the keys
      are a KV cache. Queries then sit at q_offset + arange(T).
    kv_len: number of valid key slots (scalar); slots >= kv_len are masked. Defaults to all.
    window: sliding-window size (Mistral): key j is visible to query i iff i - j < window.
    implementation: None (let JAX choose), "xla" or "cudnn"; "einsum" forces the explicit path.
    dropout_rate, dropout_rng: dropout on the attention probabilities (training only; both
      must be set for it to apply).
    """
    T, S = q_BTHD.shape[1], k_BSKD.shape[1]
    use_dropout = dropout_rate > 0.0 and dropout_rng is not None
    if implementation is None and q_offset is None and kv_len is None:
        from jaxmodels.kernels import dispatch
        impl = dispatch.choice("attention")
        if impl == "pallas" and not use_dropout:  # config kernels.attention: flash attention
            return dispatch.attention(q_BTHD, k_BSKD, v_BSKD, causal=causal, window=window, scale=scale)
        if impl == "cpu" and jax.default_backend() == "cpu":  # the C++ kernel (the CPU default), dropout included
            from jaxmodels.kernels import cpu_attention
            if cpu_attention.supported(q_BTHD, k_BSKD, v_BSKD, window=window):
                return cpu_attention.cpu_attention(
                    q_BTHD, k_BSKD, v_BSKD, causal=causal, scale=scale,
                    dropout_rate=dropout_rate if use_dropout else 0.0, dropout_rng=dropout_rng)
    if implementation is None and jax.default_backend() == "cpu":
        implementation = "einsum"
    if use_dropout or implementation == "einsum":
        mask_TS = attention_mask(T, S, causal=causal, q_offset=q_offset, kv_len=kv_len, window=window)
        return attention_einsum(q_BTHD, k_BSKD, v_BSKD, mask_TS, scale=scale,
                                dropout_rate=dropout_rate if use_dropout else 0.0,
                                dropout_rng=dropout_rng)
    if q_offset is None and kv_len is None:
        # Aligned self-attention: the fast path (cuDNN flash attention on GPU).
        local = None if window is None else (window - 1, 0)
        return jax.nn.dot_product_attention(
            q_BTHD, k_BSKD, v_BSKD, scale=scale, is_causal=causal,
            local_window_size=local, implementation=implementation)
    mask_TS = attention_mask(T, S, causal=causal, q_offset=q_offset, kv_len=kv_len, window=window)
    return jax.nn.dot_product_attention(
        q_BTHD, k_BSKD, v_BSKD, mask=mask_TS[None, None], scale=scale,
        implementation=implementation)


def attention_mask(T: int, S: int, *, causal: bool = True, q_offset: Optional[jax.Array] = None,
                   kv_len: Optional[jax.Array] = None, window: Optional[int] = None) -> jax.Array:
    """Boolean mask_TS: True where query t (at absolute position q_offset + t) sees key s."""
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
    return mask_TS


def attention_einsum(q_BTHD: jax.Array, k_BSKD: jax.Array, v_BSKD: jax.Array,
                     mask_TS: Optional[jax.Array] = None, *, scale: Optional[float] = None,
                     dropout_rate: float = 0.0, dropout_rng: Optional[jax.Array] = None,
                     softcap: float = 0.0) -> jax.Array:
    """softmax(q k^T * scale + mask) v written out with einsums; logits and softmax in f32.

    Grouped-query attention: the H query heads are split into K groups of G = H / K that
    share one key/value head. mask_TS: True where visible, [T, S] or any shape that
    broadcasts to [B, K, G, T, S] (e.g. a per-example key mask [B, 1, 1, 1, S]).
    softcap > 0 caps the scaled logits: softcap * tanh(logits / softcap) (Gemma 2).
    Returns out_BTHD in q's dtype.
    """
    B, T, H, D = q_BTHD.shape
    S, K = k_BSKD.shape[1], k_BSKD.shape[2]
    G = H // K
    scale = D ** -0.5 if scale is None else scale
    # Head-major operands before both batched matmuls, and 4-D throughout: on XLA:CPU the
    # einsums straight from the [B, T, H, D] layout (5-D with the group axis) ran 1.6x slower
    # (fwd + bwd at nanoGPT's 64x256x6x64). The G query heads of a group share their k/v, so
    # they ride along the query axis: M = G*T rows per (batch, kv head).
    M = G * T
    q_BKMD = q_BTHD.reshape(B, T, K, G, D).transpose(0, 2, 3, 1, 4).reshape(B, K, M, D)
    k_BKSD = k_BSKD.transpose(0, 2, 1, 3)
    v_BKSD = v_BSKD.transpose(0, 2, 1, 3)
    logits_BKMS = jnp.einsum("bkmd,bksd->bkms", q_BKMD, k_BKSD,
                             preferred_element_type=jnp.float32) * scale
    if softcap:
        logits_BKMS = softcap * jnp.tanh(logits_BKMS / softcap)
    if mask_TS is not None:
        if mask_TS.ndim == 2:
            mask = jnp.tile(mask_TS, (G, 1)) if G > 1 else mask_TS
        else:  # a per-example mask, broadcastable to [B, K, G, T, S]
            mask = jnp.broadcast_to(mask_TS, (B, K, G, T, S)).reshape(B, K, M, S)
        logits_BKMS = jnp.where(mask, logits_BKMS, jnp.finfo(jnp.float32).min)
    probs_BKMS = jax.nn.softmax(logits_BKMS, axis=-1)
    if dropout_rate > 0.0:
        probs_BKMS = dropout(probs_BKMS, dropout_rate, dropout_rng)
    out_BKMD = jnp.einsum("bkms,bksd->bkmd", probs_BKMS.astype(v_BSKD.dtype), v_BKSD)
    out_BTKGD = out_BKMD.reshape(B, K, G, T, D).transpose(0, 3, 1, 2, 4)
    return out_BTKGD.reshape(B, T, H, D).astype(q_BTHD.dtype)


def init_stacked_kv_cache(n_layers: int, batch: int, max_len: int, model_max_len: int, kv_heads: int,
                          head_dim: int, dtype=jnp.float32) -> dict:
    """An empty KV cache for a scanned layer stack: {"k", "v"} of shape
    [n_layers, B, max_len, K, D]; refuses a max_len past the model's trained context."""
    if max_len > model_max_len:
        raise ValueError(f"max_len={max_len} exceeds the model's max_len={model_max_len}")
    shape = (n_layers, batch, max_len, kv_heads, head_dim)
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
