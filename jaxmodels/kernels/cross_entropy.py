"""Cross-entropy straight from the final hidden states and the LM-head weight (llm.c's
"fused classifier"): the [tokens, vocab] logits are never held for the whole vocabulary.

All three forms share one signature and return per-token values, so a reader can put them
side by side:

    nll_N, correct_N = f(hidden_NC, weight_VC, targets_N, bias_V=None, softcap=0.0, dtype=None)

  logits_NV = softcap * tanh(z / softcap) if softcap else z,  z = hidden @ weight^T + bias
  nll_N     = logsumexp(logits_N.) - logits[N, target]          (f32)
  correct_N = 1.0 where argmax(logits_N.) == target (first index on ties), else 0.0; no gradient

- `cross_entropy_dense`: the reference. Materialises the f32 logits (and autodiff keeps
  them, plus their gradient, for the backward pass): what every LM did before.
- `cross_entropy_chunked`: plain JAX, runs on every backend. A `lax.scan` over vocabulary
  chunks carries an online logsumexp (running max m and sum s of exp(z - m)), the target's
  logit and the running argmax; its `custom_vjp` saves only the hidden states, the weight
  and the per-token logsumexp, and the backward pass recomputes each chunk's logits to form
  d logits = (softmax - onehot) * g and accumulate d hidden (carried) and d weight (one
  chunk of rows per step). Peak extra memory: a few [N, chunk] f32 buffers.
- `cross_entropy_pallas`: the same algorithm as Pallas kernels tiled over (tokens, vocab):
  the forward and d hidden kernels walk the vocabulary for one block of tokens; the d weight
  kernel walks the tokens for one block of vocabulary rows. Runs compiled on GPU (Triton)
  and in interpret mode on CPU (the tests).

`dtype` is the matmul dtype (the model's compute dtype; accumulation is always f32), as
`jaxmodels.layers.dense.project_out` does for the dense head. Gradients flow to hidden,
weight and bias (returned in their own dtypes); targets get none.
"""
from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp
from jax import lax

NEG_INF = -1e30  # finite "minus infinity" for padded vocabulary columns (exp underflows to 0)


# ----------------------------------------------------------------------------- reference
def _cap(z: jax.Array, softcap: float) -> jax.Array:
    return softcap * jnp.tanh(z / softcap) if softcap else z


def cross_entropy_dense(hidden_NC: jax.Array, weight_VC: jax.Array, targets_N: jax.Array, *,
                        bias_V: Optional[jax.Array] = None, softcap: float = 0.0,
                        dtype=None) -> tuple[jax.Array, jax.Array]:
    """The reference: full f32 logits, then logsumexp and the target's logit."""
    dtype = dtype or hidden_NC.dtype
    z_NV = jnp.dot(hidden_NC.astype(dtype), weight_VC.astype(dtype).T,
                   preferred_element_type=jnp.float32)
    if bias_V is not None:
        z_NV = z_NV + bias_V.astype(jnp.float32)
    logits_NV = _cap(z_NV, softcap)
    targets_N = targets_N.astype(jnp.int32)
    lse_N = jax.nn.logsumexp(logits_NV, axis=-1)
    target_N = jnp.take_along_axis(logits_NV, targets_N[:, None], axis=-1)[:, 0]
    correct_N = (jnp.argmax(logits_NV, axis=-1) == targets_N).astype(jnp.float32)
    return lse_N - target_N, lax.stop_gradient(correct_N)


# ----------------------------------------------------------------------------- chunked (XLA)
def vocab_chunks(V: int, chunk: int) -> tuple[int, int]:
    """(number of chunks, chunk size) covering V with chunks of at most ~`chunk` rows.

    Prefers a chunk size that divides V (no padded copy of the weight): GPT-2's padded
    vocabulary 50304 = 8 x 6288. Otherwise pads V up to n * chunk.
    """
    n = max(1, -(-V // chunk))
    for m in range(n, 2 * n + 1):
        if V % m == 0:
            return m, V // m
    return n, -(-V // n)


def _chunk_logits(h_NC, w_KC, b_K, start, V, softcap, dtype):
    """Logits of one vocabulary chunk (rows start .. start+K): f32, padded rows at NEG_INF."""
    z_NK = jnp.dot(h_NC.astype(dtype), w_KC.astype(dtype).T, preferred_element_type=jnp.float32)
    z_NK = z_NK + b_K.astype(jnp.float32)
    logits_NK = _cap(z_NK, softcap)
    col_K = start + jnp.arange(w_KC.shape[0], dtype=jnp.int32)
    return jnp.where(col_K[None, :] < V, logits_NK, NEG_INF), z_NK, col_K


def _padded(weight_VC, bias_V, n, K):
    V = weight_VC.shape[0]
    if n * K != V:
        weight_VC = jnp.pad(weight_VC, ((0, n * K - V), (0, 0)))
        bias_V = jnp.pad(bias_V, (0, n * K - V))
    return weight_VC.reshape(n, K, -1), bias_V.reshape(n, K)


def _chunked_fwd_impl(hidden_NC, weight_VC, bias_V, targets_N, softcap, chunk, dtype):
    N = hidden_NC.shape[0]
    V = weight_VC.shape[0]
    n, K = vocab_chunks(V, chunk)
    w_nKC, b_nK = _padded(weight_VC, bias_V, n, K)
    h_NC = hidden_NC.astype(dtype)
    t_N = targets_N.astype(jnp.int32)

    def step(carry, xs):
        m_N, s_N, tgt_N, best_N, arg_N = carry
        i, w_KC, b_K = xs
        logits_NK, _, col_K = _chunk_logits(h_NC, w_KC, b_K, i * K, V, softcap, dtype)
        cmax_N = jnp.max(logits_NK, axis=-1)
        m_new = jnp.maximum(m_N, cmax_N)
        s_N = s_N * jnp.exp(m_N - m_new) + jnp.sum(jnp.exp(logits_NK - m_new[:, None]), axis=-1)
        hit_NK = col_K[None, :] == t_N[:, None]
        tgt_N = tgt_N + jnp.sum(jnp.where(hit_NK, logits_NK, 0.0), axis=-1)
        carg_N = i * K + jnp.argmax(logits_NK, axis=-1).astype(jnp.int32)
        better = cmax_N > best_N  # strictly: the first chunk holding the max wins, as argmax
        return (m_new, s_N, tgt_N, jnp.where(better, cmax_N, best_N),
                jnp.where(better, carg_N, arg_N)), None

    init = (jnp.full((N,), NEG_INF, jnp.float32), jnp.zeros((N,), jnp.float32),
            jnp.zeros((N,), jnp.float32), jnp.full((N,), -jnp.inf, jnp.float32),
            jnp.zeros((N,), jnp.int32))
    (m_N, s_N, tgt_N, _, arg_N), _ = lax.scan(step, init, (jnp.arange(n, dtype=jnp.int32), w_nKC, b_nK))
    lse_N = m_N + jnp.log(s_N)
    return lse_N - tgt_N, (arg_N == t_N).astype(jnp.float32), lse_N


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def _chunked(hidden_NC, weight_VC, bias_V, targets_N, softcap, chunk, dtype):
    nll_N, correct_N, _ = _chunked_fwd_impl(hidden_NC, weight_VC, bias_V, targets_N, softcap, chunk, dtype)
    return nll_N, correct_N


def _chunked_fwd(hidden_NC, weight_VC, bias_V, targets_N, softcap, chunk, dtype):
    nll_N, correct_N, lse_N = _chunked_fwd_impl(hidden_NC, weight_VC, bias_V, targets_N, softcap, chunk, dtype)
    return (nll_N, correct_N), (hidden_NC, weight_VC, bias_V, targets_N, lse_N)


def _chunked_bwd(softcap, chunk, dtype, res, cts):
    hidden_NC, weight_VC, bias_V, targets_N, lse_N = res
    g_N = cts[0].astype(jnp.float32)  # the `correct` output carries no gradient
    V, C = weight_VC.shape
    n, K = vocab_chunks(V, chunk)
    w_nKC, b_nK = _padded(weight_VC, bias_V, n, K)
    h_NC = hidden_NC.astype(dtype)
    t_N = targets_N.astype(jnp.int32)

    def step(dh_NC, xs):
        i, w_KC, b_K = xs
        logits_NK, z_NK, col_K = _chunk_logits(h_NC, w_KC, b_K, i * K, V, softcap, dtype)
        p_NK = jnp.exp(logits_NK - lse_N[:, None])
        dlogits_NK = (p_NK - (col_K[None, :] == t_N[:, None])) * g_N[:, None]
        if softcap:  # d/dz [c tanh(z / c)] = 1 - tanh^2
            dlogits_NK = dlogits_NK * (1.0 - jnp.square(jnp.tanh(z_NK / softcap)))
        d = dlogits_NK.astype(dtype)
        dh_NC = dh_NC + jnp.dot(d, w_KC.astype(dtype), preferred_element_type=jnp.float32)
        # Each chunk's rows leave in the weight's own dtype: stacked in f32 and cast after
        # the scan, a bf16 head's gradient was a whole f32 copy of the weight and then a
        # bf16 one (the same values: the cast is elementwise either way).
        dw_KC = jnp.dot(d.T, h_NC, preferred_element_type=jnp.float32).astype(weight_VC.dtype)
        return dh_NC, (dw_KC, jnp.sum(dlogits_NK, axis=0))

    dh_NC, (dw_nKC, db_nK) = lax.scan(step, jnp.zeros(hidden_NC.shape, jnp.float32),
                                      (jnp.arange(n, dtype=jnp.int32), w_nKC, b_nK))
    dw_VC = dw_nKC.reshape(n * K, C)[:V]
    db_V = db_nK.reshape(n * K)[:V]
    return (dh_NC.astype(hidden_NC.dtype), dw_VC,
            db_V.astype(bias_V.dtype), None)


_chunked.defvjp(_chunked_fwd, _chunked_bwd)


def cross_entropy_chunked(hidden_NC: jax.Array, weight_VC: jax.Array, targets_N: jax.Array, *,
                          bias_V: Optional[jax.Array] = None, softcap: float = 0.0, dtype=None,
                          chunk: int = 8192) -> tuple[jax.Array, jax.Array]:
    """Plain-JAX chunked form (any backend): `lax.scan` over vocabulary chunks of ~`chunk` rows."""
    dtype = dtype or hidden_NC.dtype
    bias = jnp.zeros((weight_VC.shape[0],), jnp.float32) if bias_V is None else bias_V
    return _chunked(hidden_NC, weight_VC, bias, targets_N, float(softcap), int(chunk), jnp.dtype(dtype))


# ----------------------------------------------------------------------------- Pallas
def _pallas_modules():
    from jax.experimental import pallas as pl
    return pl


def _pad_to(x, axis, multiple, value=0):
    size = x.shape[axis]
    extra = (-size) % multiple
    if not extra:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, extra)
    return jnp.pad(x, widths, constant_values=value)


def _tile_logits(h, w, b, col, V, softcap):
    z = jnp.dot(h, w.T, preferred_element_type=jnp.float32) + b[None, :].astype(jnp.float32)
    logits = _cap(z, softcap)
    return jnp.where(col[None, :] < V, logits, NEG_INF), z


def _fwd_kernel(h_ref, w_ref, b_ref, t_ref, nll_ref, lse_ref, correct_ref, *, V, bv, nv, softcap):
    pl = _pallas_modules()
    h = h_ref[...]
    t = t_ref[...]
    bn = h.shape[0]

    def body(j, carry):
        m, s, tgt, best, arg = carry
        w = w_ref[pl.ds(j * bv, bv), :]
        b = b_ref[pl.ds(j * bv, bv)]
        col = j * bv + jnp.arange(bv, dtype=jnp.int32)
        logits, _ = _tile_logits(h, w, b, col, V, softcap)
        cmax = jnp.max(logits, axis=-1)
        m_new = jnp.maximum(m, cmax)
        s = s * jnp.exp(m - m_new) + jnp.sum(jnp.exp(logits - m_new[:, None]), axis=-1)
        tgt = tgt + jnp.sum(jnp.where(col[None, :] == t[:, None], logits, 0.0), axis=-1)
        # First column holding the tile's max (argmax by max/min reductions: Triton-friendly).
        carg = jnp.min(jnp.where(logits == cmax[:, None], col[None, :], jnp.iinfo(jnp.int32).max), axis=-1)
        better = cmax > best
        return m_new, s, tgt, jnp.where(better, cmax, best), jnp.where(better, carg, arg)

    init = (jnp.full((bn,), NEG_INF, jnp.float32), jnp.zeros((bn,), jnp.float32),
            jnp.zeros((bn,), jnp.float32), jnp.full((bn,), -jnp.inf, jnp.float32),
            jnp.zeros((bn,), jnp.int32))
    m, s, tgt, _, arg = lax.fori_loop(0, nv, body, init)
    lse = m + jnp.log(s)
    lse_ref[...] = lse
    nll_ref[...] = lse - tgt
    correct_ref[...] = (arg == t).astype(jnp.float32)


def _dh_kernel(h_ref, w_ref, b_ref, t_ref, lse_ref, g_ref, dh_ref, *, V, bv, nv, softcap):
    pl = _pallas_modules()
    h, t, lse, g = h_ref[...], t_ref[...], lse_ref[...], g_ref[...]

    def body(j, dh):
        w = w_ref[pl.ds(j * bv, bv), :]
        b = b_ref[pl.ds(j * bv, bv)]
        col = j * bv + jnp.arange(bv, dtype=jnp.int32)
        logits, z = _tile_logits(h, w, b, col, V, softcap)
        d = (jnp.exp(logits - lse[:, None]) - (col[None, :] == t[:, None])) * g[:, None]
        if softcap:
            d = d * (1.0 - jnp.square(jnp.tanh(z / softcap)))
        return dh + jnp.dot(d.astype(w.dtype), w, preferred_element_type=jnp.float32)

    dh_ref[...] = lax.fori_loop(0, nv, body, jnp.zeros(h.shape, jnp.float32))


def _dw_kernel(h_ref, w_ref, b_ref, t_ref, lse_ref, g_ref, dw_ref, db_ref, *, V, bn, nn_, softcap):
    pl = _pallas_modules()
    w, b = w_ref[...], b_ref[...]
    bv = w.shape[0]
    col = pl.program_id(0) * bv + jnp.arange(bv, dtype=jnp.int32)

    def body(i, carry):
        dw, db = carry
        h = h_ref[pl.ds(i * bn, bn), :]
        t = t_ref[pl.ds(i * bn, bn)]
        lse = lse_ref[pl.ds(i * bn, bn)]
        g = g_ref[pl.ds(i * bn, bn)]
        logits, z = _tile_logits(h, w, b, col, V, softcap)
        d = (jnp.exp(logits - lse[:, None]) - (col[None, :] == t[:, None])) * g[:, None]
        if softcap:
            d = d * (1.0 - jnp.square(jnp.tanh(z / softcap)))
        dw = dw + jnp.dot(d.astype(h.dtype).T, h, preferred_element_type=jnp.float32)
        return dw, db + jnp.sum(d, axis=0)

    dw, db = lax.fori_loop(0, nn_, body, (jnp.zeros(w.shape, jnp.float32), jnp.zeros((bv,), jnp.float32)))
    dw_ref[...] = dw
    db_ref[...] = db


def _pallas_prepare(hidden_NC, weight_VC, bias_V, targets_N, dtype, block_n, block_v):
    """Pads tokens to block_n, vocabulary to block_v and channels to a power of two (Triton
    tiles are powers of two; zero channels change no dot product)."""
    pl = _pallas_modules()
    C = hidden_NC.shape[1]
    Cp = pl.next_power_of_2(C)
    h = _pad_to(_pad_to(hidden_NC.astype(dtype), 1, Cp), 0, block_n)
    w = _pad_to(_pad_to(weight_VC.astype(dtype), 1, Cp), 0, block_v)
    b = _pad_to(bias_V.astype(jnp.float32), 0, block_v)
    t = _pad_to(targets_N.astype(jnp.int32), 0, block_n, value=-1)
    return h, w, b, t


def _pallas_fwd_impl(hidden_NC, weight_VC, bias_V, targets_N, softcap, dtype, block_n, block_v, interpret):
    pl = _pallas_modules()
    N, V = hidden_NC.shape[0], weight_VC.shape[0]
    h, w, b, t = _pallas_prepare(hidden_NC, weight_VC, bias_V, targets_N, dtype, block_n, block_v)
    Np, Cp = h.shape
    Vp = w.shape[0]
    kernel = functools.partial(_fwd_kernel, V=V, bv=block_v, nv=Vp // block_v, softcap=softcap)
    row = pl.BlockSpec((block_n,), lambda i: (i,))
    nll, lse, correct = pl.pallas_call(
        kernel, grid=(Np // block_n,),
        in_specs=[pl.BlockSpec((block_n, Cp), lambda i: (i, 0)), pl.BlockSpec((Vp, Cp), lambda i: (0, 0)),
                  pl.BlockSpec((Vp,), lambda i: (0,)), row],
        out_specs=[row, row, row],
        out_shape=[jax.ShapeDtypeStruct((Np,), jnp.float32)] * 3,
        interpret=interpret, name="cross_entropy_fwd",
    )(h, w, b, t)
    return nll[:N], correct[:N], lse


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6, 7, 8))
def _pallas_ce(hidden_NC, weight_VC, bias_V, targets_N, softcap, dtype, block_n, block_v, interpret):
    nll, correct, _ = _pallas_fwd_impl(hidden_NC, weight_VC, bias_V, targets_N, softcap, dtype,
                                       block_n, block_v, interpret)
    return nll, correct


def _pallas_ce_fwd(hidden_NC, weight_VC, bias_V, targets_N, softcap, dtype, block_n, block_v, interpret):
    nll, correct, lse = _pallas_fwd_impl(hidden_NC, weight_VC, bias_V, targets_N, softcap, dtype,
                                         block_n, block_v, interpret)
    return (nll, correct), (hidden_NC, weight_VC, bias_V, targets_N, lse)


def _pallas_ce_bwd(softcap, dtype, block_n, block_v, interpret, res, cts):
    pl = _pallas_modules()
    hidden_NC, weight_VC, bias_V, targets_N, lse = res
    N, C = hidden_NC.shape
    V = weight_VC.shape[0]
    h, w, b, t = _pallas_prepare(hidden_NC, weight_VC, bias_V, targets_N, dtype, block_n, block_v)
    g = _pad_to(cts[0].astype(jnp.float32), 0, block_n)  # padded tokens: zero gradient
    Np, Cp = h.shape
    Vp = w.shape[0]
    row_n = pl.BlockSpec((block_n,), lambda i: (i,))
    all_n = pl.BlockSpec((Np,), lambda j: (0,))
    dh = pl.pallas_call(
        functools.partial(_dh_kernel, V=V, bv=block_v, nv=Vp // block_v, softcap=softcap),
        grid=(Np // block_n,),
        in_specs=[pl.BlockSpec((block_n, Cp), lambda i: (i, 0)), pl.BlockSpec((Vp, Cp), lambda i: (0, 0)),
                  pl.BlockSpec((Vp,), lambda i: (0,)), row_n, row_n, row_n],
        out_specs=pl.BlockSpec((block_n, Cp), lambda i: (i, 0)),
        out_shape=jax.ShapeDtypeStruct((Np, Cp), jnp.float32),
        interpret=interpret, name="cross_entropy_dhidden",
    )(h, w, b, t, lse, g)
    dw, db = pl.pallas_call(
        functools.partial(_dw_kernel, V=V, bn=block_n, nn_=Np // block_n, softcap=softcap),
        grid=(Vp // block_v,),
        in_specs=[pl.BlockSpec((Np, Cp), lambda j: (0, 0)), pl.BlockSpec((block_v, Cp), lambda j: (j, 0)),
                  pl.BlockSpec((block_v,), lambda j: (j,)), all_n, all_n, all_n],
        out_specs=[pl.BlockSpec((block_v, Cp), lambda j: (j, 0)), pl.BlockSpec((block_v,), lambda j: (j,))],
        out_shape=[jax.ShapeDtypeStruct((Vp, Cp), jnp.float32), jax.ShapeDtypeStruct((Vp,), jnp.float32)],
        interpret=interpret, name="cross_entropy_dweight",
    )(h, w, b, t, lse, g)
    return (dh[:N, :C].astype(hidden_NC.dtype), dw[:V, :C].astype(weight_VC.dtype),
            db[:V].astype(bias_V.dtype), None)


_pallas_ce.defvjp(_pallas_ce_fwd, _pallas_ce_bwd)


def cross_entropy_pallas(hidden_NC: jax.Array, weight_VC: jax.Array, targets_N: jax.Array, *,
                         bias_V: Optional[jax.Array] = None, softcap: float = 0.0, dtype=None,
                         block_n: int = 64, block_v: int = 128,
                         interpret: bool = False) -> tuple[jax.Array, jax.Array]:
    """Pallas form: tiles of block_n tokens x block_v vocabulary rows (powers of two)."""
    dtype = dtype or hidden_NC.dtype
    bias = jnp.zeros((weight_VC.shape[0],), jnp.float32) if bias_V is None else bias_V
    return _pallas_ce(hidden_NC, weight_VC, bias, targets_N, float(softcap), jnp.dtype(dtype),
                      int(block_n), int(block_v), bool(interpret))
