"""Fused LayerNorm / RMSNorm forward and backward, with DiT's adaLN modulate fused in.

    y_BTC = f(x_BTC, weight_C=None, bias_C=None, *, kind="layer"|"rms", eps, shift_BC=None,
              scale_BC=None, dtype=None)

  x̂ = (x - mean) / sqrt(var + eps)        (kind="layer")     x̂ = x / sqrt(mean(x²) + eps)   (kind="rms")
  y = x̂ * weight + bias                   (each optional; statistics in f32, as layers/norms.py)
  y = y * (1 + scale[b]) + shift[b]       (adaLN modulate, per example b; optional)

- `norm_xla`: the reference, written out in jnp exactly as layers/norms.py and DiT's
  `modulate` compute it (autodiff for the backward pass).
- `norm_pallas`: one program per (example, block of rows) holds the rows in fast memory and
  writes y, the mean and 1/std; the backward kernel recomputes x̂ and writes dx plus
  per-block partial sums for d weight, d bias, d scale and d shift, which are summed
  afterwards (no atomics):  with g = dy (1 + scale) weight,
    dx = rstd (g - mean(g) - x̂ mean(g x̂))     (layer; rms drops the mean(g) term).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax


def norm_xla(x, weight_C=None, bias_C=None, *, kind: str = "layer", eps: float = 1e-5,
             shift_BC=None, scale_BC=None, dtype=None):
    """The reference (plain jnp). x [B, T, C] (or [N, C] without modulate)."""
    out_dtype = dtype or x.dtype
    x32 = x.astype(jnp.float32)
    if kind == "layer":
        mean = jnp.mean(x32, axis=-1, keepdims=True)
        y = (x32 - mean) * lax.rsqrt(jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True) + eps)
    else:
        y = x32 * lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + eps)
    if weight_C is not None:
        y = y * weight_C.astype(jnp.float32)
    if bias_C is not None:
        y = y + bias_C.astype(jnp.float32)
    y = y.astype(out_dtype)
    if shift_BC is not None:  # DiT's modulate, in the activation dtype as models/dit.py does
        y = y * (1.0 + scale_BC.astype(out_dtype)[:, None, :]) + shift_BC.astype(out_dtype)[:, None, :]
    return y


# ----------------------------------------------------------------------------- kernels
def _normalise(x, C, kind, eps):
    col_ok = (jnp.arange(x.shape[-1]) < C)[None, :]
    x = jnp.where(col_ok, x.astype(jnp.float32), 0.0)
    if kind == "layer":
        mean = jnp.sum(x, axis=-1) / C
        xc = jnp.where(col_ok, x - mean[:, None], 0.0)
    else:
        mean = jnp.zeros(x.shape[:1], jnp.float32)
        xc = x
    rstd = lax.rsqrt(jnp.sum(xc * xc, axis=-1) / C + eps)
    return xc * rstd[:, None], rstd, col_ok


def _fwd_kernel(x_ref, w_ref, b_ref, sh_ref, sc_ref, y_ref, *, C, kind, eps, out_dtype):
    xhat, _, _ = _normalise(x_ref[...], C, kind, eps)
    y = (xhat * w_ref[...][None, :] + b_ref[...][None, :]).astype(out_dtype)
    y_ref[...] = (y * (1.0 + sc_ref[...][None, :].astype(out_dtype))
                  + sh_ref[...][None, :].astype(out_dtype)).astype(y_ref.dtype)


def _bwd_kernel(x_ref, w_ref, b_ref, sh_ref, sc_ref, dy_ref, dx_ref, dw_ref, db_ref, dsc_ref, dsh_ref, *,
                C, kind, eps):
    xhat, rstd, col_ok = _normalise(x_ref[...], C, kind, eps)
    w, b, sc = w_ref[...][None, :], b_ref[...][None, :], sc_ref[...][None, :].astype(jnp.float32)
    dy = dy_ref[...].astype(jnp.float32)
    dpre = dy * (1.0 + sc)                    # through the modulate
    g = jnp.where(col_ok, dpre * w, 0.0)      # d x̂
    proj = jnp.sum(g * xhat, axis=-1, keepdims=True) / C
    dx = g - xhat * proj
    if kind == "layer":
        dx = dx - jnp.sum(g, axis=-1, keepdims=True) / C
    dx_ref[...] = (dx * rstd[:, None]).astype(dx_ref.dtype)
    dw_ref[...] = jnp.sum(dpre * xhat, axis=0)
    db_ref[...] = jnp.sum(dpre, axis=0)
    dsc_ref[...] = jnp.sum(dy * (xhat * w + b), axis=0)
    dsh_ref[...] = jnp.sum(dy, axis=0)


# ----------------------------------------------------------------------------- pallas_calls
def _prepare(x, w, b, sh, sc, block_rows):
    from jax.experimental import pallas as pl

    B, T, C = x.shape
    Cp = pl.next_power_of_2(C)
    br = min(block_rows, pl.next_power_of_2(T))
    Tp = -(-T // br) * br
    pad = lambda a, widths: jnp.pad(a, widths) if any(w for pair in widths for w in pair) else a
    x = pad(x, ((0, 0), (0, Tp - T), (0, Cp - C)))
    w, b = pad(w, ((0, Cp - C),)), pad(b, ((0, Cp - C),))
    sh, sc = pad(sh, ((0, 0), (0, Cp - C))), pad(sc, ((0, 0), (0, Cp - C)))
    rows = pl.BlockSpec((None, br, Cp), lambda i, j: (i, j, 0))
    vec = pl.BlockSpec((Cp,), lambda i, j: (0,))
    per_ex = pl.BlockSpec((None, Cp), lambda i, j: (i, 0))
    return x, w, b, sh, sc, (B, T, C, Tp, Cp, br), rows, vec, per_ex


def _forward(x, w, b, sh, sc, kind, eps, out_dtype, block_rows, interpret):
    from jax.experimental import pallas as pl

    xp, wp, bp, shp, scp, (B, T, C, Tp, Cp, br), rows, vec, per_ex = _prepare(x, w, b, sh, sc, block_rows)
    y = pl.pallas_call(
        functools.partial(_fwd_kernel, C=C, kind=kind, eps=eps, out_dtype=out_dtype),
        grid=(B, Tp // br), in_specs=[rows, vec, vec, per_ex, per_ex], out_specs=rows,
        out_shape=jax.ShapeDtypeStruct((B, Tp, Cp), out_dtype), interpret=interpret, name="norm_fwd",
    )(xp, wp, bp, shp, scp)
    return y[:, :T, :C]


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7, 8, 9))
def _fused(x, w, b, sh, sc, kind, eps, out_dtype, block_rows, interpret):
    return _forward(x, w, b, sh, sc, kind, eps, out_dtype, block_rows, interpret)


def _fused_fwd(x, w, b, sh, sc, kind, eps, out_dtype, block_rows, interpret):
    return _forward(x, w, b, sh, sc, kind, eps, out_dtype, block_rows, interpret), (x, w, b, sh, sc)


def _fused_bwd(kind, eps, out_dtype, block_rows, interpret, res, dy):
    from jax.experimental import pallas as pl

    x, w, b, sh, sc = res
    xp, wp, bp, shp, scp, (B, T, C, Tp, Cp, br), rows, vec, per_ex = _prepare(x, w, b, sh, sc, block_rows)
    dyp = jnp.pad(dy, ((0, 0), (0, Tp - T), (0, Cp - C)))
    nT = Tp // br
    part = pl.BlockSpec((None, None, Cp), lambda i, j: (i, j, 0))
    part_shape = jax.ShapeDtypeStruct((B, nT, Cp), jnp.float32)
    dx, dw, db, dsc, dsh = pl.pallas_call(
        functools.partial(_bwd_kernel, C=C, kind=kind, eps=eps),
        grid=(B, nT), in_specs=[rows, vec, vec, per_ex, per_ex, rows],
        out_specs=[rows, part, part, part, part],
        out_shape=[jax.ShapeDtypeStruct((B, Tp, Cp), x.dtype)] + [part_shape] * 4,
        interpret=interpret, name="norm_bwd",
    )(xp, wp, bp, shp, scp, dyp)
    return (dx[:, :T, :C], dw.sum((0, 1))[:C].astype(w.dtype), db.sum((0, 1))[:C].astype(b.dtype),
            dsh.sum(1)[:, :C].astype(sh.dtype), dsc.sum(1)[:, :C].astype(sc.dtype))


_fused.defvjp(_fused_fwd, _fused_bwd)


def norm_pallas(x, weight_C=None, bias_C=None, *, kind: str = "layer", eps: float = 1e-5,
                shift_BC=None, scale_BC=None, dtype=None, block_rows: int = 32, interpret: bool = False):
    """Pallas form; same signature and result as norm_xla (absent weight/bias/modulate are
    passed to the kernel as ones/zeros; their gradients are dropped)."""
    if kind not in ("layer", "rms"):
        raise ValueError(f"norm kind {kind!r}; valid: layer, rms")
    out_dtype = jnp.dtype(dtype or x.dtype)
    lead = x.shape[:-1]
    C = x.shape[-1]
    x3 = x if shift_BC is not None else x.reshape(1, -1, C)
    B = x3.shape[0]
    w = jnp.ones((C,), jnp.float32) if weight_C is None else weight_C
    b = jnp.zeros((C,), jnp.float32) if bias_C is None else bias_C
    sh = jnp.zeros((B, C), jnp.float32) if shift_BC is None else shift_BC
    sc = jnp.zeros((B, C), jnp.float32) if scale_BC is None else scale_BC
    y = _fused(x3, w, b, sh, sc, kind, float(eps), out_dtype, int(block_rows), bool(interpret))
    return y.reshape(*lead, C)
