"""Attention on XLA:CPU as one C++ custom call forward and one backward (cpu_ffi/attention.cc).

Why: XLA:CPU runs softmax(q k^T) v as batched dots over [batch x heads] small matrices plus
separate mask, softmax and transpose passes, at well under half of what the CPU does for the
same FLOPs in PyTorch's scaled_dot_product_attention (DiT-S/2's 8 x 6 x 256 x 64, forward +
backward: 44 ms against 15.7 ms on the Intel Xeon dev VM; this kernel 24 ms,
`python -m benchmarks.cpu_attention_speed`). attention.cc reads q/k/v in their
[B, T, H, D] layout, runs each (batch, head, block of 128 queries) as sgemm + one softmax pass +
sgemm, and its backward recomputes the probabilities from the saved log-sum-exp.

What it covers: f32, no sliding window, no soft-cap, aligned queries and keys (no KV-cache
offset), causal or not, grouped-query heads, dropout on the probabilities with the same hash mask
as jaxmodels.layers.dropout (so the kernel and the einsum path drop the same elements).
jaxmodels.layers.attention sends exactly that case here when config kernels.attention is
"cpu", which "auto" is on a CPU whenever the kernel builds; everything else takes the einsum
path, which is also the reference tests/kernels/test_cpu_attention.py checks this against.

Same inputs give the same bits in every call (no -ffast-math; attention.cc says why). What a
custom call does change: XLA can no longer fuse the ops that produce q and k (RoPE, a LoRA
adapter's zero term) into the attention matmul, and the fusion it picks instead may round them
differently in the last bit. So a BitNet LoRA model at init matches its base model to ~2e-8
through this kernel and bit for bit through the einsum path (tests/layers/test_adapters.py
checks both).
"""
from __future__ import annotations

from functools import partial
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.ad_checkpoint import checkpoint_name

from jaxmodels.kernels import cpu_ffi

# Checkpoint names of the forward's output and log-sum-exp. The dot-saving remat policies
# (jaxmodels.layers.stack) keep them, as they keep a dot's output: otherwise a remat backward
# pass runs the whole forward kernel again just to rebuild these two (q, k and v come from
# the saved qkv projection). Costs one [B, T, H, D] activation per layer.
OUT_NAME = "cpu_attention_out"
LSE_NAME = "cpu_attention_lse"


def supported(q_BTHD, k_BSKD, v_BSKD, *, window=None, softcap: float = 0.0) -> bool:
    """Whether cpu_attention computes this call (else the caller keeps the einsum path)."""
    f32 = jnp.dtype(jnp.float32)
    return (window is None and not softcap and q_BTHD.ndim == 4 and k_BSKD.ndim == 4
            and q_BTHD.dtype == k_BSKD.dtype == v_BSKD.dtype == f32
            and k_BSKD.shape == v_BSKD.shape and q_BTHD.shape[2] % k_BSKD.shape[2] == 0)


_NO_DROPOUT = 2 ** 32


def _call(target: str, outs, *args, causal: bool, scale: float, threshold: int, keep: float):
    return jax.ffi.ffi_call(target, outs, vmap_method="sequential")(
        *args, causal=np.int32(causal), scale=np.float32(scale), threshold=np.int64(threshold),
        keep=np.float32(keep))


FORWARD_TARGET = "jaxmodels_cpu_attention_fwd"


def forward_flops(q_shape, k_shape, *_) -> float:
    """FLOPs of the forward call as the einsum path counts them (for model-FLOP counts): the
    logits and the output products over every (query, key) pair, 4 B T S H D."""
    B, T, H, D = q_shape
    return 4.0 * B * T * float(k_shape[1]) * H * D


def _forward(q, k, v, words, statics):
    B, T, H, _ = q.shape
    outs = (jax.ShapeDtypeStruct(q.shape, jnp.float32), jax.ShapeDtypeStruct((B, H, T), jnp.float32))
    return _call(FORWARD_TARGET, outs, q, k, v, words, **statics)


@partial(jax.custom_vjp, nondiff_argnums=(4,))
def _attention(q, k, v, words, statics):
    return _forward(q, k, v, words, dict(statics))[0]


def _fwd(q, k, v, words, statics):
    out, lse = _forward(q, k, v, words, dict(statics))
    out, lse = checkpoint_name(out, OUT_NAME), checkpoint_name(lse, LSE_NAME)
    return out, (q, k, v, lse, words)


def _bwd(statics, res, g):
    q, k, v, lse, words = res
    outs = tuple(jax.ShapeDtypeStruct(x.shape, jnp.float32) for x in (q, k, v))
    dq, dk, dv = _call("jaxmodels_cpu_attention_bwd", outs, q, k, v, lse, g.astype(jnp.float32), words,
                       **dict(statics))
    return dq, dk, dv, np.zeros(words.shape, jax.dtypes.float0)


_attention.defvjp(_fwd, _bwd)


def cpu_attention(q_BTHD: jax.Array, k_BSKD: jax.Array, v_BSKD: jax.Array, *, causal: bool = True,
                  scale: Optional[float] = None, dropout_rate: float = 0.0,
                  dropout_rng: Optional[jax.Array] = None) -> jax.Array:
    """softmax(q k^T * scale) v for f32 q [B, T, H, D], k/v [B, S, K, D]; out [B, T, H, D].

    causal: query t sees keys s <= t. scale: default D ** -0.5. dropout_rate with dropout_rng:
    dropout on the probabilities with jaxmodels.layers.dropout's mask (the same elements the
    einsum path drops for the same key)."""
    cpu_ffi.require("kernels.attention='cpu' (kernels.attention=xla runs the einsum path)")
    scale = q_BTHD.shape[-1] ** -0.5 if scale is None else float(scale)
    if dropout_rate > 0.0 and dropout_rng is not None:
        if dropout_rate >= 1.0:
            return jnp.zeros_like(q_BTHD)
        keep = 1.0 - float(dropout_rate)
        words = jax.random.bits(dropout_rng, (2,), jnp.uint32)  # as dropout.keep_mask draws them
        threshold = int(keep * 2 ** 32)
    else:
        keep, words, threshold = 1.0, jnp.zeros((2,), jnp.uint32), _NO_DROPOUT
    statics = (("causal", bool(causal)), ("scale", scale), ("threshold", threshold), ("keep", keep))
    return _attention(q_BTHD, k_BSKD, v_BSKD, words, statics)
