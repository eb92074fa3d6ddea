"""AdamW moments in 8 bits: blockwise dynamic quantisation (Dettmers et al. 2022, "8-bit
Optimizers via Block-wise Quantization"; bitsandbytes' Adam8bit).

Each moment leaf is flattened and cut into blocks of BLOCK values. A block keeps its absmax
(f32) and every value the index (uint8) of the nearest of 256 code values to x / absmax.
The codes follow a "dynamic" (decimal-exponent) layout: a decade 10^-e wide gets 2^(6-e)
(signed) or 2^(7-e) (unsigned) linearly spaced values, so small entries keep their relative
precision down to 1e-6 of the block's largest, which a linear int8 code would flush to 0.
The first moment uses the signed code, the second (never negative) the unsigned one, which
spends the sign bit on precision.

Per step: de-quantise, update in f32 exactly as Adam does, re-quantise. State memory per
parameter: 2 x (1 byte + 4/BLOCK bytes) = 2.03 bytes instead of 8. Leaves smaller than
MIN_SIZE (norms, biases) keep f32 moments, as bitsandbytes does: they cost little and their
precision matters most.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

BLOCK = 256
MIN_SIZE = 4096


def _dynamic_code(signed: bool) -> np.ndarray:
    """The 256 sorted code values in [-1, 1] (signed) or [0, 1] (unsigned)."""
    values = [0.0, 1.0]
    for e in range(7):                      # decades [10^(e-7), 10^(e-6)] ... [0.1, 1]
        n = 2 ** e if signed else 2 ** (e + 1)
        edges = np.linspace(0.1, 1.0, n + 1)
        mids = 10.0 ** (e - 6) * (edges[:-1] + edges[1:]) / 2
        values += list(mids) + ([-m for m in mids] if signed else [])
    code = np.sort(np.asarray(values, np.float32))
    assert code.shape == (256,), code.shape
    return code


SIGNED = _dynamic_code(True)
UNSIGNED = _dynamic_code(False)


def _count_below(mids: np.ndarray, x: jax.Array) -> jax.Array:
    """How many of the sorted 255 `mids` are < x (searchsorted), as an unrolled binary search
    of elementwise steps: XLA fuses it into one pass, where jnp.searchsorted's loop would
    hold int32 temporaries the size of the model."""
    table = jnp.asarray(mids)
    # The first step compares with one constant (a gather at a constant index over the whole
    # array would be constant-folded by XLA at compile time, slowly).
    idx = jnp.where(float(mids[127]) < x, 128, 0).astype(jnp.int32)
    for step in (64, 32, 16, 8, 4, 2, 1):
        probe = idx + step
        idx = jnp.where(table[probe - 1] < x, probe, idx)
    return idx


def quantize(x: jax.Array, code: np.ndarray) -> dict:
    """x (any shape, f32) -> {"q": uint8[n_pad], "absmax": f32[n_pad / BLOCK]}."""
    flat = x.reshape(-1).astype(jnp.float32)
    pad = -flat.shape[0] % BLOCK
    blocks = (jnp.pad(flat, (0, pad)) if pad else flat).reshape(-1, BLOCK)
    absmax = jnp.max(jnp.abs(blocks), axis=1)
    scaled = blocks / jnp.where(absmax > 0, absmax, 1.0)[:, None]
    q = _count_below((code[1:] + code[:-1]) / 2, scaled.reshape(-1)).astype(jnp.uint8)
    return {"q": q, "absmax": absmax}


def dequantize(qx: dict, code: np.ndarray, shape) -> jax.Array:
    values = jnp.asarray(code)[qx["q"].astype(jnp.int32)].reshape(-1, BLOCK) * qx["absmax"][:, None]
    return values.reshape(-1)[: int(np.prod(shape))].reshape(shape)


class Adam8bitState(NamedTuple):
    count: jax.Array
    mu: Any     # per leaf: f32 array (small leaves) or {"q", "absmax"}
    nu: Any


def _quantized(p) -> bool:
    return int(np.prod(p.shape)) >= MIN_SIZE


def scale_by_adam_8bit(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8) -> optax.GradientTransformation:
    """optax.scale_by_adam with 8-bit blockwise moments (drop-in: same update rule)."""

    def stacked(p) -> bool:
        # A scanned stack [n_layers, ...]: quantised and updated layer by layer (lax.map), so
        # the f32 temporaries of the update are one layer's, not the whole stack's.
        return p.ndim >= 3 and _quantized(p)

    def init(params):
        def zeros(p, code):
            # All-zero moments: every index points at the code's 0 (built directly: quantising
            # a zeros array would be constant-folded at compile time, slowly).
            if not _quantized(p):
                return jnp.zeros(p.shape, jnp.float32)
            lead = p.shape[:1] if stacked(p) else ()
            n = int(np.prod(p.shape[len(lead):]))
            n_pad = n + (-n % BLOCK)
            zero = int(np.searchsorted(code, 0.0))
            return {"q": jnp.full(lead + (n_pad,), zero, jnp.uint8),
                    "absmax": jnp.zeros(lead + (n_pad // BLOCK,), jnp.float32)}
        mu = jax.tree.map(lambda p: zeros(p, SIGNED), params)
        nu = jax.tree.map(lambda p: zeros(p, UNSIGNED), params)
        return Adam8bitState(count=jnp.zeros((), jnp.int32), mu=mu, nu=nu)

    def update(updates, state, params=None):
        del params
        count = optax.safe_increment(state.count)
        c1 = 1 - b1 ** count.astype(jnp.float32)
        c2 = 1 - b2 ** count.astype(jnp.float32)

        def one(g, m, v):
            g32 = g.astype(jnp.float32)
            small = not isinstance(m, dict)
            m32 = m if small else dequantize(m, SIGNED, g.shape)
            v32 = v if small else dequantize(v, UNSIGNED, g.shape)
            m32 = b1 * m32 + (1 - b1) * g32
            v32 = b2 * v32 + (1 - b2) * jnp.square(g32)
            u = ((m32 / c1) / (jnp.sqrt(v32 / c2) + eps)).astype(g.dtype)
            return u, (m32 if small else quantize(m32, SIGNED)), (v32 if small else quantize(v32, UNSIGNED))

        treedef = jax.tree.structure(updates)
        grads = treedef.flatten_up_to(updates)
        mus, nus = treedef.flatten_up_to(state.mu), treedef.flatten_up_to(state.nu)
        out, new_mu, new_nu = [], [], []
        for g, m, v in zip(grads, mus, nus):
            u, m, v = jax.lax.map(lambda a: one(*a), (g, m, v)) if stacked(g) else one(g, m, v)
            out.append(u)
            new_mu.append(m)
            new_nu.append(v)
        unflat = lambda xs: treedef.unflatten(xs)  # noqa: E731
        return unflat(out), Adam8bitState(count=count, mu=unflat(new_mu), nu=unflat(new_nu))

    return optax.GradientTransformation(init, update)
