"""RWKV-7's WKV state update as a Pallas kernel, beside the XLA reference with the same signature.

    y, S_T = f(r, w, k, v, alpha, beta, S0)      r..beta [B, H, T, N], S [B, H, N(v), N(k)]

    S_t = S_{t-1} (diag(w_t) + α_t β_tᵀ) + v_t k_tᵀ,     y_t = S_t r_t      (all f32)

- `wkv7_xla`: the reference, models/rwkv7.py's own forms: the chunked closed form
  (`wkv7_chunked`, default) or the step-by-step scan (`wkv7_recurrent`).
- `wkv7_pallas`: one program per (example, head) keeps the [N, N] state in registers and
  walks the time steps, storing the state only every `chunk` steps. Backward (custom_vjp):
  the chunks in reverse; each chunk's states are recomputed from its boundary state into a
  small per-program buffer, then with G = dL/dS_t (G += dy_t r_tᵀ at each step):
    dr = S_tᵀ dy, dv = G k, dk = Gᵀ v, dw = colsum(G ⊙ S_{t-1}), dβ = Gᵀ (S_{t-1} α),
    dα = S_{t-1}ᵀ (G β),  G_{t-1} = G diag(w) + (G β) αᵀ.
  Memory O(T N + (T / chunk) N²) per head; the per-step states never exist.
Padded time steps (w = 1, everything else 0) are the identity, so ragged T needs no masking.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax


def wkv7_xla(r, w, k, v, alpha, beta, S0, *, chunk: int = 16, recurrent: bool = False):
    """The reference: models/rwkv7.py's wkv7_chunked (or wkv7_recurrent)."""
    from jaxmodels.models import rwkv7

    if recurrent:
        return rwkv7.wkv7_recurrent(r, w, k, v, alpha, beta, S0)
    return rwkv7.wkv7_chunked(r, w, k, v, alpha, beta, S0, chunk)


def _row(ref, t):
    from jax.experimental import pallas as pl
    return ref[pl.ds(t, 1), :][0]


def _step(S, r, w, k, v, a, b):
    sa = jnp.sum(S * a[None, :], axis=1)                  # S α   [N(v)]
    return S * w[None, :] + sa[:, None] * b[None, :] + v[:, None] * k[None, :], sa


def _fwd_kernel(r_ref, w_ref, k_ref, v_ref, a_ref, b_ref, s0_ref, y_ref, sl_ref, ck_ref, *, tc, nc):
    from jax.experimental import pallas as pl

    def chunk(c, S):
        ck_ref[pl.ds(c, 1)] = S[None]

        def step(s, S):
            t = c * tc + s
            S, _ = _step(S, *(_row(ref, t) for ref in (r_ref, w_ref, k_ref, v_ref, a_ref, b_ref)))
            y_ref[pl.ds(t, 1), :] = jnp.sum(S * _row(r_ref, t)[None, :], axis=1)[None]
            return S

        return lax.fori_loop(0, tc, step, S)

    sl_ref[...] = lax.fori_loop(0, nc, chunk, s0_ref[...])


def _bwd_kernel(r_ref, w_ref, k_ref, v_ref, a_ref, b_ref, ck_ref, dy_ref, dsl_ref,
                dr_ref, dw_ref, dk_ref, dv_ref, da_ref, db_ref, ds0_ref, buf_ref, *, tc, nc):
    from jax.experimental import pallas as pl

    def chunk(cc, G):
        c = nc - 1 - cc
        S_start = ck_ref[pl.ds(c, 1)][0]

        def recompute(s, S):
            t = c * tc + s
            S, _ = _step(S, *(_row(ref, t) for ref in (r_ref, w_ref, k_ref, v_ref, a_ref, b_ref)))
            buf_ref[pl.ds(s, 1)] = S[None]
            return S

        lax.fori_loop(0, tc, recompute, S_start)

        def step(ss, G):
            s = tc - 1 - ss
            t = c * tc + s
            r, w, k, v, a, b, dy = (_row(ref, t) for ref in (r_ref, w_ref, k_ref, v_ref, a_ref, b_ref, dy_ref))
            S = buf_ref[pl.ds(s, 1)][0]
            S_prev = jnp.where(s > 0, buf_ref[pl.ds(jnp.maximum(s - 1, 0), 1)][0], S_start)
            G = G + dy[:, None] * r[None, :]
            sa = jnp.sum(S_prev * a[None, :], axis=1)
            gb = jnp.sum(G * b[None, :], axis=1)             # G β  [N(v)]
            dr_ref[pl.ds(t, 1), :] = jnp.sum(S * dy[:, None], axis=0)[None]
            dv_ref[pl.ds(t, 1), :] = jnp.sum(G * k[None, :], axis=1)[None]
            dk_ref[pl.ds(t, 1), :] = jnp.sum(G * v[:, None], axis=0)[None]
            dw_ref[pl.ds(t, 1), :] = jnp.sum(G * S_prev, axis=0)[None]
            db_ref[pl.ds(t, 1), :] = jnp.sum(G * sa[:, None], axis=0)[None]
            da_ref[pl.ds(t, 1), :] = jnp.sum(S_prev * gb[:, None], axis=0)[None]
            return G * w[None, :] + gb[:, None] * a[None, :]

        return lax.fori_loop(0, tc, step, G)

    ds0_ref[...] = lax.fori_loop(0, nc, chunk, dsl_ref[...])


def _prep(xs, chunk):
    T = xs[0].shape[2]
    tc = min(chunk, T)
    Tp = -(-T // tc) * tc

    def pad(x, value):
        x = x.astype(jnp.float32)
        return jnp.pad(x, ((0, 0), (0, 0), (0, Tp - T), (0, 0)), constant_values=value) if Tp != T else x
    r, w, k, v, a, b = xs
    return (pad(r, 0.0), pad(w, 1.0), pad(k, 0.0), pad(v, 0.0), pad(a, 0.0), pad(b, 0.0)), tc, Tp // tc


def _specs(Tp, N, nc):
    from jax.experimental import pallas as pl
    return dict(seq=pl.BlockSpec((None, None, Tp, N), lambda b, h: (b, h, 0, 0)),
                state=pl.BlockSpec((None, None, N, N), lambda b, h: (b, h, 0, 0)),
                ck=pl.BlockSpec((None, None, nc, N, N), lambda b, h: (b, h, 0, 0, 0)))


def _forward(xs, S0, chunk, interpret):
    from jax.experimental import pallas as pl

    B, H, T, N = xs[0].shape
    xp, tc, nc = _prep(xs, chunk)
    Tp = xp[0].shape[2]
    sp = _specs(Tp, N, nc)
    f32 = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.float32)
    y, S, ckpt = pl.pallas_call(
        functools.partial(_fwd_kernel, tc=tc, nc=nc), grid=(B, H),
        in_specs=[sp["seq"]] * 6 + [sp["state"]], out_specs=[sp["seq"], sp["state"], sp["ck"]],
        out_shape=[f32(B, H, Tp, N), f32(B, H, N, N), f32(B, H, nc, N, N)],
        interpret=interpret, name="wkv7_fwd",
    )(*xp, S0.astype(jnp.float32))
    return y[:, :, :T], S, ckpt


@functools.partial(jax.custom_vjp, nondiff_argnums=(7, 8))
def _wkv7(r, w, k, v, a, b, S0, chunk, interpret):
    y, S, _ = _forward((r, w, k, v, a, b), S0, chunk, interpret)
    return y, S


def _wkv7_fwd(r, w, k, v, a, b, S0, chunk, interpret):
    y, S, ckpt = _forward((r, w, k, v, a, b), S0, chunk, interpret)
    return (y, S), (r, w, k, v, a, b, S0, ckpt)


def _wkv7_bwd(chunk, interpret, res, cts):
    from jax.experimental import pallas as pl

    *xs, S0, ckpt = res
    dy, dS = cts
    B, H, T, N = xs[0].shape
    xp, tc, nc = _prep(xs, chunk)
    Tp = xp[0].shape[2]
    dyp = jnp.pad(dy.astype(jnp.float32), ((0, 0), (0, 0), (0, Tp - T), (0, 0)))
    sp = _specs(Tp, N, nc)
    f32 = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.float32)
    *grads, dS0, _ = pl.pallas_call(
        functools.partial(_bwd_kernel, tc=tc, nc=nc), grid=(B, H),
        in_specs=[sp["seq"]] * 6 + [sp["ck"], sp["seq"], sp["state"]],
        out_specs=[sp["seq"]] * 6 + [sp["state"], pl.BlockSpec((None, None, tc, N, N), lambda b, h: (b, h, 0, 0, 0))],
        out_shape=[f32(B, H, Tp, N)] * 6 + [f32(B, H, N, N), f32(B, H, tc, N, N)],
        interpret=interpret, name="wkv7_bwd",
    )(*xp, ckpt, dyp, dS.astype(jnp.float32))
    return tuple(g[:, :, :T].astype(x.dtype) for g, x in zip(grads, xs)) + (dS0.astype(S0.dtype),)


_wkv7.defvjp(_wkv7_fwd, _wkv7_bwd)


def wkv7_pallas(r, w, k, v, alpha, beta, S0, *, chunk: int = 64, interpret: bool = False):
    """Pallas form; same signature and result as wkv7_xla."""
    return _wkv7(r, w, k, v, alpha, beta, S0, int(chunk), bool(interpret))
