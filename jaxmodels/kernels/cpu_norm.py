"""LayerNorm / RMSNorm on XLA:CPU as one C++ custom call forward and one backward
(cpu_ffi/norm.cc), with DiT's adaLN modulate fused in.

Why: XLA:CPU runs a LayerNorm as a chain of small thunks (row reductions for the mean and the
variance, then the elementwise passes; twice as many in the backward pass), each its own trip
through memory and through the thunk executor; here they are two custom calls (forward,
backward), each one pass over its rows split over XLA's intra-op threads. A DiT-S/2 f32 train
step took 0.96x the time, nanoGPT 6/6/384 0.99x, the nanoGPT baby level (BENCHMARKS.md, "CPU
speed per machine type", fifth run). `dispatch.norm` sends the f32 case here when config
kernels.norm is "cpu", which "auto" is on a CPU whenever the C++ kernels build.

Same math as jaxmodels.kernels.norms.norm_xla (the reference tests/kernels/test_cpu_norm.py
checks it against, values and gradients); row sums in a fixed lane order, so the same inputs
give the same bits in every call.
"""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from jaxmodels.kernels import cpu_ffi

FORWARD_TARGET = "jaxmodels_cpu_norm_fwd"
BACKWARD_TARGET = "jaxmodels_cpu_norm_bwd"


def supported(x, weight_C=None, bias_C=None, *, shift_BC=None, scale_BC=None, dtype=None) -> bool:
    """Whether cpu_norm computes this call: everything f32 (output included), and with the
    modulate x is [B, T, C] and shift / scale are [B, C]."""
    f32 = jnp.dtype(jnp.float32)
    arrays = [a for a in (x, weight_C, bias_C, shift_BC, scale_BC) if a is not None]
    if any(jnp.dtype(a.dtype) != f32 for a in arrays) or (dtype is not None and jnp.dtype(dtype) != f32):
        return False
    if x.ndim < 1 or x.size == 0:
        return False
    if (shift_BC is None) != (scale_BC is None):
        return False
    if shift_BC is not None:
        want = (x.shape[0], x.shape[-1])
        return x.ndim == 3 and shift_BC.shape == want and scale_BC.shape == want
    return True


def _attrs(statics):
    kind, eps, has_w, has_b, has_mod = statics
    return dict(rms=np.int32(kind == "rms"), eps=np.float32(eps), has_w=np.int32(has_w),
                has_b=np.int32(has_b), has_mod=np.int32(has_mod))


def _forward(x, w, b, sh, sc, statics):
    out = jax.ShapeDtypeStruct(x.shape, jnp.float32)
    return jax.ffi.ffi_call(FORWARD_TARGET, out, vmap_method="sequential")(x, w, b, sh, sc, **_attrs(statics))


@partial(jax.custom_vjp, nondiff_argnums=(5,))
def _norm(x, w, b, sh, sc, statics):
    return _forward(x, w, b, sh, sc, statics)


def _fwd(x, w, b, sh, sc, statics):
    return _forward(x, w, b, sh, sc, statics), (x, w, b, sh, sc)


def _bwd(statics, res, dy):
    x, w, b, sh, sc = res
    outs = tuple(jax.ShapeDtypeStruct(a.shape, jnp.float32) for a in (x, w, b, sh, sc))
    dx, dw, db, dsh, dsc = jax.ffi.ffi_call(BACKWARD_TARGET, outs, vmap_method="sequential")(
        x, w, b, sh, sc, dy.astype(jnp.float32), **_attrs(statics))
    return dx, dw, db, dsh, dsc


_norm.defvjp(_fwd, _bwd)


def cpu_norm(x, weight_C=None, bias_C=None, *, kind: str = "layer", eps: float = 1e-5, shift_BC=None,
             scale_BC=None, dtype=None):
    """norm_xla's contract for f32 (see `supported`): x [..., C], or [B, T, C] with the modulate."""
    cpu_ffi.require("kernels.norm='cpu' (kernels.norm=xla runs the jnp ops)")
    if kind not in ("layer", "rms"):
        raise ValueError(f"cpu_norm kind={kind!r}; valid: layer, rms")
    if not supported(x, weight_C, bias_C, shift_BC=shift_BC, scale_BC=scale_BC, dtype=dtype):
        raise ValueError(f"cpu_norm takes f32 x [..., C] (or [B, T, C] with [B, C] shift and scale); got "
                         f"{x.shape} {x.dtype}")
    C = x.shape[-1]
    x3 = x if shift_BC is not None else x.reshape(1, -1, C)
    dummy = jnp.zeros((1,), jnp.float32)
    statics = (kind, float(eps), weight_C is not None, bias_C is not None, shift_BC is not None)
    y = _norm(x3, dummy if weight_C is None else weight_C, dummy if bias_C is None else bias_C,
              dummy if shift_BC is None else shift_BC, dummy if scale_BC is None else scale_BC, statics)
    return y.reshape(x.shape)
