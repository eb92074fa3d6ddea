"""Mamba's selective scan, chunked over time with the state in fast memory, beside the XLA
reference with the same signature.

    y_BTE, h_last_BEN = f(x_BTE, dt_BTE, A_EN, B_BTN, C_BTN, h0_BEN)

    h_t = exp(dt_t A) ⊙ h_{t-1} + (dt_t x_t) B_tᵀ        (per channel e: a row of N states)
    y_t = h_t C_t                                         (the skip D·x and the gate stay outside)

- `selective_scan_xla`: the reference, exactly what models/mamba.py runs: jaxmodels.scan's
  fused_scan (sequential, associative or chunked; all f32).
- `selective_scan_pallas`: one program per (example, block of channels) keeps its [be, N]
  state in registers and walks the time steps; it stores the state only at chunk
  boundaries (every `chunk` steps). The backward kernel walks the chunks in reverse: it
  recomputes the chunk's states from its boundary state into a small per-program buffer,
  then runs the reverse recurrence  g_{t-1} = exp(dt_t A) ⊙ (g_t + dy_t C_tᵀ)  accumulating
  dx, d dt, dA, dB, dC and d h0. The [B, T, E, N] states never exist; memory is
  O(T (E + N) + (T / chunk) E N). dB and dC are summed over channel blocks afterwards.
Padded time steps (dt = 0, x = 0) are the identity map, so ragged T needs no masking.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax


def selective_scan_xla(x_BTE, dt_BTE, A_EN, B_BTN, C_BTN, h0_BEN, *, mode: str = "sequential",
                       chunk: int = 64):
    """The reference: models/mamba.py's make_ab / readout through jaxmodels.scan.fused_scan."""
    from jaxmodels import scan

    def make_ab(xs):
        dt, Bm, _, x = xs
        return (jnp.exp(dt[..., None] * A_EN),
                (dt * x.astype(jnp.float32))[..., None] * Bm.astype(jnp.float32)[:, :, None, :])

    def readout(h_BTEN, xs):
        return jnp.einsum("bten,btn->bte", h_BTEN, xs[2].astype(jnp.float32))

    return scan.fused_scan(make_ab, readout, (dt_BTE.astype(jnp.float32), B_BTN, C_BTN, x_BTE),
                           h0_BEN.astype(jnp.float32), mode=mode, chunk=chunk)


# ----------------------------------------------------------------------------- kernels
def _row(ref, t):
    from jax.experimental import pallas as pl
    return ref[pl.ds(t, 1), :][0].astype(jnp.float32)


def _fwd_kernel(x_ref, dt_ref, b_ref, c_ref, a_ref, h0_ref, y_ref, hl_ref, ck_ref, *, tc, nc):
    from jax.experimental import pallas as pl

    A = a_ref[...]

    def chunk(c, h):
        ck_ref[pl.ds(c, 1)] = h[None]

        def step(s, h):
            t = c * tc + s
            dt, x, Bt, Ct = _row(dt_ref, t), _row(x_ref, t), _row(b_ref, t), _row(c_ref, t)
            h = jnp.exp(dt[:, None] * A) * h + (dt * x)[:, None] * Bt[None, :]
            y_ref[pl.ds(t, 1), :] = jnp.sum(h * Ct[None, :], axis=1)[None].astype(y_ref.dtype)
            return h

        return lax.fori_loop(0, tc, step, h)

    hl_ref[...] = lax.fori_loop(0, nc, chunk, h0_ref[...].astype(jnp.float32))


def _bwd_kernel(x_ref, dt_ref, b_ref, c_ref, a_ref, ck_ref, dy_ref, dhl_ref,
                dx_ref, ddt_ref, db_ref, dc_ref, da_ref, dh0_ref, buf_ref, *, tc, nc):
    from jax.experimental import pallas as pl

    A = a_ref[...]

    def chunk(cc, carry):
        g, dA = carry
        c = nc - 1 - cc
        h_start = ck_ref[pl.ds(c, 1)][0]

        def recompute(s, h):  # the chunk's states h_t into the per-program buffer
            t = c * tc + s
            dt, x, Bt = _row(dt_ref, t), _row(x_ref, t), _row(b_ref, t)
            h = jnp.exp(dt[:, None] * A) * h + (dt * x)[:, None] * Bt[None, :]
            buf_ref[pl.ds(s, 1)] = h[None]
            return h

        lax.fori_loop(0, tc, recompute, h_start)

        def step(ss, carry):
            g, dA = carry
            s = tc - 1 - ss
            t = c * tc + s
            dt, x, Bt, Ct, dy = (_row(dt_ref, t), _row(x_ref, t), _row(b_ref, t), _row(c_ref, t),
                                 _row(dy_ref, t))
            h = buf_ref[pl.ds(s, 1)][0]
            h_prev = jnp.where(s > 0, buf_ref[pl.ds(jnp.maximum(s - 1, 0), 1)][0], h_start)
            dc_ref[pl.ds(t, 1), :] = jnp.sum(dy[:, None] * h, axis=0)[None]
            g = g + dy[:, None] * Ct[None, :]                   # dL/dh_t
            a = jnp.exp(dt[:, None] * A)
            db_ref[pl.ds(t, 1), :] = jnp.sum(g * (dt * x)[:, None], axis=0)[None]
            dxdt = jnp.sum(g * Bt[None, :], axis=1)             # d(dt * x)
            da = g * h_prev * a                                 # d(dt A) through exp
            dA = dA + da * dt[:, None]
            ddt_ref[pl.ds(t, 1), :] = (dxdt * x + jnp.sum(da * A, axis=1))[None]
            dx_ref[pl.ds(t, 1), :] = (dxdt * dt)[None]
            return g * a, dA

        return lax.fori_loop(0, tc, step, (g, dA))

    g, dA = lax.fori_loop(0, nc, chunk, (dhl_ref[...].astype(jnp.float32), jnp.zeros(A.shape, jnp.float32)))
    dh0_ref[...] = g
    da_ref[...] = dA


# ----------------------------------------------------------------------------- pallas_calls
def _layout(x, dt, Bm, C, chunk, be):
    B, T, E = x.shape
    tc = min(chunk, T)
    Tp = -(-T // tc) * tc
    padt = lambda a: jnp.pad(a, ((0, 0), (0, Tp - T), (0, 0))) if Tp != T else a
    return (padt(x.astype(jnp.float32)), padt(dt.astype(jnp.float32)), padt(Bm.astype(jnp.float32)),
            padt(C.astype(jnp.float32)), tc, Tp // tc, min(be, E))


def _specs(Tp, N, be, nc):
    from jax.experimental import pallas as pl
    return dict(
        te=pl.BlockSpec((None, Tp, be), lambda b, j: (b, 0, j)),
        tn=pl.BlockSpec((None, Tp, N), lambda b, j: (b, 0, 0)),
        a=pl.BlockSpec((be, N), lambda b, j: (j, 0)),
        en=pl.BlockSpec((None, be, N), lambda b, j: (b, j, 0)),
        ck=pl.BlockSpec((None, nc, be, N), lambda b, j: (b, 0, j, 0)),
        part=pl.BlockSpec((None, None, Tp, N), lambda b, j: (b, j, 0, 0)),
    )


def _forward(x, dt, A, Bm, C, h0, chunk, be, interpret):
    from jax.experimental import pallas as pl

    B, T, E = x.shape
    N = A.shape[1]
    xp, dtp, Bp, Cp, tc, nc, be = _layout(x, dt, Bm, C, chunk, be)
    Tp = xp.shape[1]
    sp = _specs(Tp, N, be, nc)
    y, h_last, ckpt = pl.pallas_call(
        functools.partial(_fwd_kernel, tc=tc, nc=nc), grid=(B, E // be),
        in_specs=[sp["te"], sp["te"], sp["tn"], sp["tn"], sp["a"], sp["en"]],
        out_specs=[sp["te"], sp["en"], sp["ck"]],
        out_shape=[jax.ShapeDtypeStruct((B, Tp, E), jnp.float32), jax.ShapeDtypeStruct((B, E, N), jnp.float32),
                   jax.ShapeDtypeStruct((B, nc, E, N), jnp.float32)],
        interpret=interpret, name="selective_scan_fwd",
    )(xp, dtp, Bp, Cp, A.astype(jnp.float32), h0.astype(jnp.float32))
    return y[:, :T], h_last, ckpt


@functools.partial(jax.custom_vjp, nondiff_argnums=(6, 7, 8))
def _sscan(x, dt, A, Bm, C, h0, chunk, be, interpret):
    y, h_last, _ = _forward(x, dt, A, Bm, C, h0, chunk, be, interpret)
    return y, h_last


def _sscan_fwd(x, dt, A, Bm, C, h0, chunk, be, interpret):
    y, h_last, ckpt = _forward(x, dt, A, Bm, C, h0, chunk, be, interpret)
    return (y, h_last), (x, dt, A, Bm, C, h0, ckpt)


def _sscan_bwd(chunk, be, interpret, res, cts):
    from jax.experimental import pallas as pl

    x, dt, A, Bm, C, h0, ckpt = res
    dy, dh_last = cts
    B, T, E = x.shape
    N = A.shape[1]
    xp, dtp, Bp, Cp, tc, nc, be = _layout(x, dt, Bm, C, chunk, be)
    Tp = xp.shape[1]
    dyp = jnp.pad(dy.astype(jnp.float32), ((0, 0), (0, Tp - T), (0, 0)))
    sp = _specs(Tp, N, be, nc)
    nE = E // be
    f32 = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.float32)
    dx, ddt, dB, dC, dA, dh0, _ = pl.pallas_call(
        functools.partial(_bwd_kernel, tc=tc, nc=nc), grid=(B, nE),
        in_specs=[sp["te"], sp["te"], sp["tn"], sp["tn"], sp["a"], sp["ck"], sp["te"], sp["en"]],
        out_specs=[sp["te"], sp["te"], sp["part"], sp["part"], sp["en"], sp["en"],
                   pl.BlockSpec((None, None, tc, be, N), lambda b, j: (b, j, 0, 0, 0))],
        out_shape=[f32(B, Tp, E), f32(B, Tp, E), f32(B, nE, Tp, N), f32(B, nE, Tp, N), f32(B, E, N),
                   f32(B, E, N), f32(B, nE, tc, be, N)],
        interpret=interpret, name="selective_scan_bwd",
    )(xp, dtp, Bp, Cp, A.astype(jnp.float32), ckpt, dyp, dh_last.astype(jnp.float32))
    return (dx[:, :T].astype(x.dtype), ddt[:, :T].astype(dt.dtype), dA.sum(0).astype(A.dtype),
            dB.sum(1)[:, :T].astype(Bm.dtype), dC.sum(1)[:, :T].astype(C.dtype), dh0.astype(h0.dtype))


_sscan.defvjp(_sscan_fwd, _sscan_bwd)


def selective_scan_pallas(x_BTE, dt_BTE, A_EN, B_BTN, C_BTN, h0_BEN, *, chunk: int = 64,
                          block_e: int = 64, interpret: bool = False):
    """Pallas form; same signature and result as selective_scan_xla (E % block_e == 0 or
    E < block_e)."""
    E = x_BTE.shape[-1]
    be = min(block_e, E)
    if E % be:
        raise ValueError(f"selective_scan_pallas: d_inner={E} is not a multiple of block_e={be}")
    return _sscan(x_BTE, dt_BTE, A_EN, B_BTN, C_BTN, h0_BEN, int(chunk), be, bool(interpret))
