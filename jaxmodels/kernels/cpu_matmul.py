"""Dense f32 matmuls on XLA:CPU as a C++ custom call to MKL's sgemm (cpu_ffi/matmul.cc).

Why: XLA:CPU's own f32 dot (jax 0.10) runs the transformer's dense shapes at ~300 GFLOP/s on
the 2-core Intel Xeon dev VM where MKL's sgemm (what PyTorch calls) runs them at ~350, and the
dense matmuls are 60-70% of a CPU train step. Sent here, a DiT-S/2, nanoGPT 6/6/384 or nanoGPT
baby train step took 0.89-0.94x the time of the same step with XLA's dots (BENCHMARKS.md, "CPU
speed per machine type"). With NumPy's OpenBLAS instead of MKL the same route measured slower
than XLA's dot, so "auto" takes it only when the kernels call MKL (jaxmodels.kernels.cpu_ffi
picks MKL on Intel CPUs).

`cpu_matmul(x[N, I], w[I, O])` is x @ w in f32 with its own VJP: dx = g @ w^T and dw = x^T @ g,
the same custom call with the transposes passed to sgemm (no copies). Its output carries the
checkpoint name DOT_NAME, which the dot-saving remat policies (jaxmodels.layers.stack) keep as
they keep a dot's output. jaxmodels.layers.dense sends f32 Dense matmuls here when config
kernels.matmul is "cpu" ("auto" on an Intel CPU with MKL). Results match XLA's dot to f32
rounding (a different summation order), and the same inputs give the same bits in every call
(tests/kernels/test_cpu_matmul.py).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.ad_checkpoint import checkpoint_name

# The checkpoint name of the forward output (saved by the dot-saving remat policies).
DOT_NAME = "cpu_dot"
TARGET = "jaxmodels_cpu_matmul"


def matmul_flops(a_shape, b_shape) -> float:
    """FLOPs of the forward call x[N, I] @ w[I, O] (for model-FLOP counts): 2 N I O."""
    return 2.0 * float(a_shape[0]) * float(a_shape[1]) * float(b_shape[1])


def _sgemm(a: jax.Array, b: jax.Array, ta: bool, tb: bool) -> jax.Array:
    """op(a) @ op(b) for 2-D f32 operands through the custom call."""
    m = a.shape[1] if ta else a.shape[0]
    n = b.shape[0] if tb else b.shape[1]
    out = jax.ShapeDtypeStruct((m, n), jnp.float32)
    return jax.ffi.ffi_call(TARGET, out, vmap_method="sequential")(
        a, b, ta=np.int32(ta), tb=np.int32(tb))


@jax.custom_vjp
def _matmul(x_NI: jax.Array, w_IO: jax.Array) -> jax.Array:
    return _sgemm(x_NI, w_IO, False, False)


def _matmul_fwd(x_NI, w_IO):
    return checkpoint_name(_sgemm(x_NI, w_IO, False, False), DOT_NAME), (x_NI, w_IO)


def _matmul_bwd(res, g_NO):
    x_NI, w_IO = res
    g_NO = g_NO.astype(jnp.float32)
    return _sgemm(g_NO, w_IO, False, True), _sgemm(x_NI, g_NO, True, False)


_matmul.defvjp(_matmul_fwd, _matmul_bwd)


def supported(x: jax.Array, w: jax.Array) -> bool:
    """Whether cpu_matmul computes x[N, I] @ w[I, O] (2-D f32 operands, nothing empty)."""
    f32 = jnp.dtype(jnp.float32)
    return (x.ndim == 2 and w.ndim == 2 and x.dtype == w.dtype == f32 and x.shape[1] == w.shape[0]
            and min(x.shape + w.shape) > 0)


def cpu_matmul(x_NI: jax.Array, w_IO: jax.Array) -> jax.Array:
    """x[N, I] @ w[I, O] in f32 through MKL (or the BLAS cpu_ffi loaded)."""
    from jaxmodels.kernels import cpu_ffi

    cpu_ffi.require("kernels.matmul=cpu")
    if not supported(x_NI, w_IO):
        raise ValueError(f"cpu_matmul takes 2-D f32 x[N, I] @ w[I, O]; got {x_NI.shape} {x_NI.dtype} "
                         f"@ {w_IO.shape} {w_IO.dtype}")
    return _matmul(x_NI, w_IO)
