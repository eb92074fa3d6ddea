"""Flash attention (FlashAttention-2, Dao 2023) forward and backward as Pallas kernels, beside
the XLA reference with the same signature.

    out_BTHD = f(q_BTHD, k_BSKD, v_BSKD, causal=True, window=None, softcap=0.0, scale=None)

q [batch, T, H heads, D], k/v [batch, S, K kv heads, D] with H % K == 0 (GQA; K=1 is MQA).
Query t sees key s iff (not causal or s <= t) and (window is None or t - s < window) (Mistral's
sliding window). softcap > 0 caps the scaled logits: c * tanh(x / c) (Gemma 2). Causal and
window assume aligned self-attention (queries and keys both start at position 0).

- `attention_xla`: the reference; layers/attention.py's einsum path (f32 logits and softmax).
- `flash_attention`: never forms the [T, S] matrix. Forward: one program per (query block,
  batch, head) walks the key blocks it can see, keeping a running max m, running sum l and an
  unnormalised f32 output (online softmax), and stores out and the logsumexp (f32, [B, H, T]).
  Backward (custom_vjp): delta = rowsum(out * d_out); one kernel per (key block, batch, query
  head) walks the query blocks and accumulates dK, dV; one per (query block, batch, head)
  walks the key blocks and accumulates dQ. Each recomputes p = exp(s - logsumexp) for its
  tile. Memory O(T) beyond q/k/v. GQA: the dK/dV kernel writes per query head and the G
  heads of a group are summed afterwards. Inputs bf16 or f32; dots accumulate in f32.
  Ragged T/S are padded to the block sizes (padded keys masked, padded queries sliced off).
"""
from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp
from jax import lax

MASK = -1e30  # finite: a fully masked tile must not produce inf - inf


def attention_xla(q_BTHD, k_BSKD, v_BSKD, *, causal: bool = True, window: Optional[int] = None,
                  softcap: float = 0.0, scale: Optional[float] = None):
    """The reference: layers.attention's einsum path (materialises the [T, S] logits)."""
    from jaxmodels.layers.attention import attention_einsum, attention_mask

    mask_TS = attention_mask(q_BTHD.shape[1], k_BSKD.shape[1], causal=causal, window=window)
    return attention_einsum(q_BTHD, k_BSKD, v_BSKD, mask_TS, scale=scale, softcap=softcap)


# ----------------------------------------------------------------------------- tiles
def _scores(q, k, scale, softcap):
    """Scaled (and soft-capped) f32 logits of a [bq, D] x [bk, D] tile; also tanh for the grad."""
    s = jnp.dot(q, k.T, preferred_element_type=jnp.float32) * scale
    if softcap:
        t = jnp.tanh(s / softcap)
        return softcap * t, t
    return s, None


def _visible(q_pos, k_pos, S, causal, window):
    ok = k_pos[None, :] < S
    if causal:
        ok &= k_pos[None, :] <= q_pos[:, None]
    if window is not None:
        ok &= q_pos[:, None] - k_pos[None, :] < window
    return ok


def _key_range(i, bq, bk, nk, causal, window):
    """Key blocks query block i can see: [lo, hi)."""
    hi = jnp.minimum(nk, ((i + 1) * bq - 1) // bk + 1) if causal else nk
    lo = jnp.maximum(0, (i * bq - window + 1) // bk) if window is not None else 0
    return lo, hi


def _query_range(j, bq, bk, nq, causal, window):
    """Query blocks that can see key block j: [lo, hi)."""
    lo = (j * bk) // bq if causal else 0
    hi = jnp.minimum(nq, ((j + 1) * bk - 1 + window) // bq + 1) if window is not None else nq
    return lo, hi


# ----------------------------------------------------------------------------- kernels
def _fwd_kernel(q_ref, k_ref, v_ref, o_ref, lse_ref, *, S, bq, bk, nk, scale, causal, window, softcap):
    from jax.experimental import pallas as pl

    i = pl.program_id(0)
    q = q_ref[...]
    q_pos = i * bq + jnp.arange(bq)

    def body(j, carry):
        acc, m, l = carry
        k = k_ref[pl.ds(j * bk, bk), :]
        v = v_ref[pl.ds(j * bk, bk), :]
        s, _ = _scores(q, k, scale, softcap)
        s = jnp.where(_visible(q_pos, j * bk + jnp.arange(bk), S, causal, window), s, MASK)
        m_new = jnp.maximum(m, jnp.max(s, axis=-1))
        p = jnp.exp(s - m_new[:, None])
        corr = jnp.exp(m - m_new)
        acc = acc * corr[:, None] + jnp.dot(p.astype(v.dtype), v, preferred_element_type=jnp.float32)
        return acc, m_new, l * corr + jnp.sum(p, axis=-1)

    lo, hi = _key_range(i, bq, bk, nk, causal, window)
    init = (jnp.zeros(q.shape, jnp.float32), jnp.full((bq,), MASK, jnp.float32), jnp.zeros((bq,), jnp.float32))
    acc, m, l = lax.fori_loop(lo, hi, body, init)
    l = jnp.where(l == 0.0, 1.0, l)  # a row with no visible key (only padding): output 0
    o_ref[...] = (acc / l[:, None]).astype(o_ref.dtype)
    lse_ref[...] = m + jnp.log(l)


def _dkv_kernel(q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, dk_ref, dv_ref, *,
                S, bq, bk, nq, scale, causal, window, softcap):
    from jax.experimental import pallas as pl

    j = pl.program_id(0)
    k, v = k_ref[...], v_ref[...]
    k_pos = j * bk + jnp.arange(bk)

    def body(i, carry):
        dk, dv = carry
        q = q_ref[pl.ds(i * bq, bq), :]
        do = do_ref[pl.ds(i * bq, bq), :]
        lse = lse_ref[pl.ds(i * bq, bq)]
        delta = delta_ref[pl.ds(i * bq, bq)]
        s, t = _scores(q, k, scale, softcap)
        ok = _visible(i * bq + jnp.arange(bq), k_pos, S, causal, window)
        p = jnp.where(ok, jnp.exp(s - lse[:, None]), 0.0)
        dv = dv + jnp.dot(p.astype(do.dtype).T, do, preferred_element_type=jnp.float32)
        dp = jnp.dot(do, v.T, preferred_element_type=jnp.float32)
        ds = p * (dp - delta[:, None])
        if softcap:
            ds = ds * (1.0 - t * t)
        return dk + jnp.dot(ds.astype(q.dtype).T, q, preferred_element_type=jnp.float32) * scale, dv

    lo, hi = _query_range(j, bq, bk, nq, causal, window)
    zeros = jnp.zeros(k.shape, jnp.float32)
    dk, dv = lax.fori_loop(lo, hi, body, (zeros, zeros))
    dk_ref[...] = dk
    dv_ref[...] = dv


def _dq_kernel(q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, dq_ref, *,
               S, bq, bk, nk, scale, causal, window, softcap):
    from jax.experimental import pallas as pl

    i = pl.program_id(0)
    q, do, lse, delta = q_ref[...], do_ref[...], lse_ref[...], delta_ref[...]
    q_pos = i * bq + jnp.arange(bq)

    def body(j, dq):
        k = k_ref[pl.ds(j * bk, bk), :]
        v = v_ref[pl.ds(j * bk, bk), :]
        s, t = _scores(q, k, scale, softcap)
        ok = _visible(q_pos, j * bk + jnp.arange(bk), S, causal, window)
        p = jnp.where(ok, jnp.exp(s - lse[:, None]), 0.0)
        ds = p * (jnp.dot(do, v.T, preferred_element_type=jnp.float32) - delta[:, None])
        if softcap:
            ds = ds * (1.0 - t * t)
        return dq + jnp.dot(ds.astype(k.dtype), k, preferred_element_type=jnp.float32) * scale

    lo, hi = _key_range(i, bq, bk, nk, causal, window)
    dq_ref[...] = lax.fori_loop(lo, hi, body, jnp.zeros(q.shape, jnp.float32))


# ----------------------------------------------------------------------------- pallas_calls
def _pad(x, axis, multiple):
    extra = (-x.shape[axis]) % multiple
    if not extra:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, extra)
    return jnp.pad(x, widths)


def _specs(B, Tp, Sp, H, D, G, bq, bk):
    from jax.experimental import pallas as pl

    return dict(
        q_blk=pl.BlockSpec((None, bq, None, D), lambda i, b, h: (b, i, h, 0)),
        q_all=pl.BlockSpec((None, Tp, None, D), lambda j, b, h: (b, 0, h, 0)),
        kv_all=pl.BlockSpec((None, Sp, None, D), lambda i, b, h: (b, 0, h // G, 0)),
        kv_blk=pl.BlockSpec((None, bk, None, D), lambda j, b, h: (b, j, h // G, 0)),
        kvh_blk=pl.BlockSpec((None, bk, None, D), lambda j, b, h: (b, j, h, 0)),
        row_blk=pl.BlockSpec((None, None, bq), lambda i, b, h: (b, h, i)),
        row_all=pl.BlockSpec((None, None, Tp), lambda j, b, h: (b, h, 0)),
    )


def _forward(q, k, v, causal, window, softcap, scale, bq, bk, interpret):
    from jax.experimental import pallas as pl

    B, T, H, D = q.shape
    S, K = k.shape[1], k.shape[2]
    qp, kp, vp = _pad(q, 1, bq), _pad(k, 1, bk), _pad(v, 1, bk)
    Tp, Sp = qp.shape[1], kp.shape[1]
    sp = _specs(B, Tp, Sp, H, D, H // K, bq, bk)
    kernel = functools.partial(_fwd_kernel, S=S, bq=bq, bk=bk, nk=Sp // bk, scale=scale,
                               causal=causal, window=window, softcap=softcap)
    out, lse = pl.pallas_call(
        kernel, grid=(Tp // bq, B, H),
        in_specs=[sp["q_blk"], sp["kv_all"], sp["kv_all"]],
        out_specs=[sp["q_blk"], sp["row_blk"]],
        out_shape=[jax.ShapeDtypeStruct(qp.shape, q.dtype), jax.ShapeDtypeStruct((B, H, Tp), jnp.float32)],
        interpret=interpret, name="flash_attention_fwd",
    )(qp, kp, vp)
    return out[:, :T], lse


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5, 6, 7, 8, 9))
def _flash(q, k, v, causal, window, softcap, scale, bq, bk, interpret):
    return _forward(q, k, v, causal, window, softcap, scale, bq, bk, interpret)[0]


def _flash_fwd(q, k, v, causal, window, softcap, scale, bq, bk, interpret):
    out, lse = _forward(q, k, v, causal, window, softcap, scale, bq, bk, interpret)
    return out, (q, k, v, out, lse)


def _flash_bwd(causal, window, softcap, scale, bq, bk, interpret, res, d_out):
    from jax.experimental import pallas as pl

    q, k, v, out, lse = res
    B, T, H, D = q.shape
    S, K = k.shape[1], k.shape[2]
    G = H // K
    # delta_t = sum_d out * d_out (FlashAttention-2's D): the softmax-backward row term.
    delta = jnp.einsum("bthd,bthd->bht", out.astype(jnp.float32), d_out.astype(jnp.float32))
    qp, dop = _pad(q, 1, bq), _pad(d_out.astype(q.dtype), 1, bq)
    kp, vp = _pad(k, 1, bk), _pad(v, 1, bk)
    delta = _pad(delta, 2, bq)
    Tp, Sp = qp.shape[1], kp.shape[1]
    sp = _specs(B, Tp, Sp, H, D, G, bq, bk)
    common = dict(S=S, bq=bq, bk=bk, scale=scale, causal=causal, window=window, softcap=softcap)
    dk_h, dv_h = pl.pallas_call(
        functools.partial(_dkv_kernel, nq=Tp // bq, **common), grid=(Sp // bk, B, H),
        in_specs=[sp["q_all"], sp["kv_blk"], sp["kv_blk"], sp["q_all"], sp["row_all"], sp["row_all"]],
        out_specs=[sp["kvh_blk"], sp["kvh_blk"]],
        out_shape=[jax.ShapeDtypeStruct((B, Sp, H, D), jnp.float32)] * 2,
        interpret=interpret, name="flash_attention_dkv",
    )(qp, kp, vp, dop, lse, delta)
    dq = pl.pallas_call(
        functools.partial(_dq_kernel, nk=Sp // bk, **common), grid=(Tp // bq, B, H),
        in_specs=[sp["q_blk"], sp["kv_all"], sp["kv_all"], sp["q_blk"], sp["row_blk"], sp["row_blk"]],
        out_specs=sp["q_blk"],
        out_shape=jax.ShapeDtypeStruct((B, Tp, H, D), jnp.float32),
        interpret=interpret, name="flash_attention_dq",
    )(qp, kp, vp, dop, lse, delta)
    group = lambda x: x[:, :S].reshape(B, S, K, G, D).sum(axis=3)  # GQA: sum the group's heads
    return dq[:, :T].astype(q.dtype), group(dk_h).astype(k.dtype), group(dv_h).astype(v.dtype)


_flash.defvjp(_flash_fwd, _flash_bwd)


def flash_attention(q_BTHD, k_BSKD, v_BSKD, *, causal: bool = True, window: Optional[int] = None,
                    softcap: float = 0.0, scale: Optional[float] = None, block_q: int = 64,
                    block_k: int = 64, interpret: bool = False):
    """Pallas flash attention; same signature and result as attention_xla."""
    H, K = q_BTHD.shape[2], k_BSKD.shape[2]
    if H % K:
        raise ValueError(f"flash_attention: {H} query heads is not a multiple of {K} kv heads")
    if causal and q_BTHD.shape[1] != k_BSKD.shape[1]:
        raise ValueError("flash_attention: causal needs aligned self-attention (T == S); "
                         "decode with a KV cache through layers.attention.attention")
    scale = q_BTHD.shape[-1] ** -0.5 if scale is None else float(scale)
    bq = min(block_q, max(16, 1 << (q_BTHD.shape[1] - 1).bit_length()))
    bk = min(block_k, max(16, 1 << (k_BSKD.shape[1] - 1).bit_length()))
    return _flash(q_BTHD, k_BSKD, v_BSKD, bool(causal), None if window is None else int(window),
                  float(softcap), scale, bq, bk, bool(interpret))
