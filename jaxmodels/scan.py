"""The one linear-recurrence engine: h_t = a_t ⊙ h_{t-1} + b_t over axis 1 (time).

Every recurrent family (Mamba's selective scan, RetNet's recurrent form, RWKV's WKV) runs
through here, so there is one place to make scans fast and one to test.

Modes (`mode=`):
  "sequential"   lax.scan, one step at a time (fastest on CPU, docs/cpu_notes.md);
  "associative"  lax.associative_scan over the whole sequence on pairs
                 (a2·a1, a2·b1 + b2) — log depth, best on GPU for short sequences;
  "chunked"      a sequential lax.scan over chunks of `chunk` steps with the associative
                 form inside each chunk: log-depth parallelism with bounded memory;
  "auto"         sequential on CPU, chunked elsewhere (`resolve_mode`).
In "sequential" and "chunked" each chunk body is rematerialised (jax.checkpoint), so the
backward pass stores the state only at chunk boundaries, not at every step.

Never "cumprod then divide": products of decays underflow to 0 and the division blows up.

Two entry points:
  linear_scan(a, b, h0)                  -> (h_all, h_last)  with a, b already built;
  fused_scan(make_ab, readout, xs, h0)   -> (y_all, h_last)  builds a, b per chunk from
      smaller inputs and reads the state out per chunk (Mamba: the [B,T,E,N] state never
      exists for the whole sequence at once when chunked).
step(a_t, b_t, h) is one decoding step. wkv_log_scan is the log-space (running-max) form
RWKV-4's WKV needs. Everything computes in f32 whatever the input dtype.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp

MODES = ("auto", "sequential", "associative", "chunked")
PyTree = Any

# RWKV's "minus infinity" for the running max: finite so that (-1e38) - (-1e38) = 0, not NaN.
NEG_BIG = -1e38


def resolve_mode(mode: str) -> str:
    """Maps "auto" to "sequential" on CPU (docs/cpu_notes.md: lax.scan is faster there) else "chunked"."""
    if mode not in MODES:
        raise ValueError(f"unknown scan mode {mode!r}; valid: {', '.join(MODES)}")
    if mode == "auto":
        return "sequential" if jax.default_backend() == "cpu" else "chunked"
    return mode


def _combine(left, right):
    """Composition of two affine maps h -> a·h + b (left first): the associative operator."""
    a1, b1 = left
    a2, b2 = right
    return a2 * a1, a2 * b1 + b2


def step(a_t: jax.Array, b_t: jax.Array, h: jax.Array) -> jax.Array:
    """One recurrence step for decoding: returns h_t = a_t ⊙ h + b_t in f32."""
    return a_t.astype(jnp.float32) * h.astype(jnp.float32) + b_t.astype(jnp.float32)


def _pad_time(xs: PyTree, T: int, chunk: int) -> tuple[PyTree, jax.Array, int]:
    """Pads axis 1 of every leaf to a multiple of `chunk`; returns (xs, valid_T, n_chunks)."""
    n_chunks = -(-T // chunk)
    pad = n_chunks * chunk - T
    valid_T = jnp.arange(n_chunks * chunk) < T
    if pad:
        xs = jax.tree.map(lambda x: jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2)), xs)
    return xs, valid_T, n_chunks


def _to_chunks(x: jax.Array, n_chunks: int, chunk: int) -> jax.Array:
    """[B, n*c, ...] -> [n, B, c, ...] (chunk index leading, for lax.scan)."""
    x = x.reshape((x.shape[0], n_chunks, chunk) + x.shape[2:])
    return jnp.moveaxis(x, 1, 0)


def _from_chunks(y: jax.Array) -> jax.Array:
    """[n, B, c, ...] -> [B, n*c, ...]."""
    y = jnp.moveaxis(y, 0, 1)
    return y.reshape((y.shape[0], y.shape[1] * y.shape[2]) + y.shape[3:])


def fused_scan(
    make_ab: Callable[[PyTree], tuple[jax.Array, jax.Array]],
    readout: Callable[[jax.Array, PyTree], PyTree],
    xs: PyTree,
    h0: jax.Array,
    *,
    mode: str = "auto",
    chunk: int = 64,
) -> tuple[PyTree, jax.Array]:
    """Linear recurrence whose coefficients and outputs are computed chunk by chunk.

    xs: pytree of [B, T, ...] inputs. make_ab(xs_slice) -> (a, b), each [B, t, *S] for a
    time slice of length t; readout(h [B, t, *S] f32, xs_slice) -> y pytree of [B, t, ...].
    h0: [B, *S] initial state. Returns (y_all [B, T, ...], h_last [B, *S] f32).
    Both callables must act on each time step independently (elementwise in time).
    """
    mode = resolve_mode(mode)
    T = jax.tree.leaves(xs)[0].shape[1]
    h0 = h0.astype(jnp.float32)

    def ab_f32(x):
        a, b = make_ab(x)
        return a.astype(jnp.float32), b.astype(jnp.float32)

    def run_associative(x, h_init, valid=None):
        a, b = ab_f32(x)
        if valid is not None:  # padded steps become the identity map (a=1, b=0)
            shape = (1, valid.shape[0]) + (1,) * (a.ndim - 2)
            a = jnp.where(valid.reshape(shape), a, 1.0)
            b = jnp.where(valid.reshape(shape), b, 0.0)
        # Folding h_init into the first b is exact: h_1 = a_1·h_0 + b_1.
        b = b.at[:, 0].add(a[:, 0] * h_init)
        _, h = jax.lax.associative_scan(_combine, (a, b), axis=1)
        return readout(h, x), h[:, -1]

    if mode == "associative":
        return run_associative(xs, h0)

    chunk = max(1, min(chunk, T))
    xs_p, valid_T, n_chunks = _pad_time(xs, T, chunk)
    xs_c = jax.tree.map(lambda x: _to_chunks(x, n_chunks, chunk), xs_p)
    valid_c = valid_T.reshape(n_chunks, chunk)

    if mode == "chunked":
        def chunk_body(h, inp):
            x, valid = inp
            y, h_new = run_associative(x, h, valid)
            return h_new, y
    else:  # sequential: lax.scan over the steps of the chunk
        def chunk_body(h, inp):
            x, valid = inp

            def one_step(h_prev, inp_t):
                x_t, valid_t = inp_t
                x_t1 = jax.tree.map(lambda v: v[:, None], x_t)
                a, b = ab_f32(x_t1)
                h_t = jnp.where(valid_t, a[:, 0] * h_prev + b[:, 0], h_prev)
                y = readout(h_t[:, None], x_t1)
                return h_t, jax.tree.map(lambda v: v[:, 0], y)

            x_time = jax.tree.map(lambda v: jnp.moveaxis(v, 1, 0), x)
            h_new, y = jax.lax.scan(one_step, h, (x_time, valid))
            return h_new, jax.tree.map(lambda v: jnp.moveaxis(v, 0, 1), y)

    if n_chunks > 1:
        # Store only chunk-boundary states for the backward pass.
        chunk_body = jax.checkpoint(chunk_body, prevent_cse=False)
    h_last, y_c = jax.lax.scan(chunk_body, h0, (xs_c, valid_c))
    y = jax.tree.map(lambda v: _from_chunks(v)[:, :T], y_c)
    return y, h_last


def linear_scan(
    a: jax.Array,
    b: jax.Array,
    h0: Optional[jax.Array] = None,
    *,
    mode: str = "auto",
    chunk: int = 64,
) -> tuple[jax.Array, jax.Array]:
    """h_t = a_t ⊙ h_{t-1} + b_t for t = 1..T over axis 1.

    a, b: [B, T, *S] (a may broadcast against b); h0: [B, *S] or None (zeros).
    Returns (h_all [B, T, *S], h_last [B, *S]), both f32.
    """
    a = jnp.broadcast_to(a, jnp.broadcast_shapes(a.shape, b.shape))
    if h0 is None:
        h0 = jnp.zeros((b.shape[0],) + b.shape[2:], jnp.float32)
    return fused_scan(lambda x: x, lambda h, x: h, (a, b), h0, mode=mode, chunk=chunk)


# --------------------------------------------------------------------------------------
# Log-space form for RWKV-4's WKV.
#
# The state (num, den) = sum_i exp(w·(t-i) + k_i) · (v_i, 1) overflows in f32 when k is
# large, so it is kept as (n, d, p) with num = n·e^p, den = d·e^p and p a running max.
# The recurrence num_t = e^w num_{t-1} + e^{k_t} v_t is still linear, and the composition
# of two steps in this representation is associative:
#   (l1, p1, n1, d1) then (l2, p2, n2, d2):  l = l1 + l2, p = max(l2 + p1, p2),
#   n = n1·e^{l2+p1-p} + n2·e^{p2-p}, d likewise,
# where l is the accumulated log-decay. So the same sequential / associative / chunked
# modes apply.
# --------------------------------------------------------------------------------------


def _log_combine(left, right):
    l1, p1, n1, d1 = left
    l2, p2, n2, d2 = right
    p = jnp.maximum(l2 + p1, p2)
    e1 = jnp.exp(l2 + p1 - p)
    e2 = jnp.exp(p2 - p)
    return l1 + l2, p, e1 * n1 + e2 * n2, e1 * d1 + e2 * d2


def wkv_init_state(batch: int, channels: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Empty WKV state (num, den, max) as in HF RWKV: zeros, zeros, -1e38."""
    zeros = jnp.zeros((batch, channels), jnp.float32)
    return zeros, zeros, jnp.full((batch, channels), NEG_BIG, jnp.float32)


def wkv_log_scan(
    w: jax.Array,
    u: jax.Array,
    k: jax.Array,
    v: jax.Array,
    state: Optional[tuple[jax.Array, jax.Array, jax.Array]] = None,
    *,
    mode: str = "auto",
    chunk: int = 64,
) -> tuple[jax.Array, tuple[jax.Array, jax.Array, jax.Array]]:
    """RWKV-4 WKV in the numerically stable running-max form.

    w: [C] log-decay (negative, = -exp(time_decay)); u: [C] bonus for the current token
    (time_first); k, v: [B, T, C]; state: (num, den, max) each [B, C] or None (empty).
    out_t = (e^{u+k_t} v_t + sum_{i<t} e^{(t-1-i)w + k_i} v_i) / (same with v -> 1).
    Returns (out [B, T, C] f32, new state), matching HF's rwkv_linear_attention_cpu.
    """
    mode = resolve_mode(mode)
    B, T, C = k.shape
    w = w.astype(jnp.float32)
    u = u.astype(jnp.float32)
    k = k.astype(jnp.float32)
    v = v.astype(jnp.float32)
    n0, d0, p0 = wkv_init_state(B, C) if state is None else (s.astype(jnp.float32) for s in state)

    def output(p_prev, n_prev, d_prev, k_t, v_t):
        q = jnp.maximum(p_prev, u + k_t)
        e1 = jnp.exp(p_prev - q)
        e2 = jnp.exp(u + k_t - q)
        return (e1 * n_prev + e2 * v_t) / (e1 * d_prev + e2)

    def run_associative(carry, kv, valid=None):
        n_prev, d_prev, p_prev = carry
        k_c, v_c = kv
        l_c = jnp.broadcast_to(w, k_c.shape)
        p_c, n_c, d_c = k_c, v_c, jnp.ones_like(k_c)
        if valid is not None:  # padded steps: identity element (l=0, empty contribution)
            vm = valid[None, :, None]
            l_c = jnp.where(vm, l_c, 0.0)
            p_c = jnp.where(vm, p_c, NEG_BIG)
            n_c = jnp.where(vm, n_c, 0.0)
            d_c = jnp.where(vm, d_c, 0.0)
        # l_s is the log-decay accumulated since the chunk start: it brings the carry forward.
        l_s, p_s, n_s, d_s = jax.lax.associative_scan(_log_combine, (l_c, p_c, n_c, d_c), axis=1)
        _, p_all, n_all, d_all = _log_combine(
            (0.0, p_prev[:, None], n_prev[:, None], d_prev[:, None]), (l_s, p_s, n_s, d_s))
        # The output at t uses the state *before* t: shift right by one, carry in front.
        p_before = jnp.concatenate([p_prev[:, None], p_all[:, :-1]], axis=1)
        n_before = jnp.concatenate([n_prev[:, None], n_all[:, :-1]], axis=1)
        d_before = jnp.concatenate([d_prev[:, None], d_all[:, :-1]], axis=1)
        out = output(p_before, n_before, d_before, k_c, v_c)
        # Padded steps are identity elements, so the last slot holds the last real state.
        return (n_all[:, -1], d_all[:, -1], p_all[:, -1]), out

    if mode == "associative":
        (n, d, p), out = run_associative((n0, d0, p0), (k, v))
        return out, (n, d, p)

    chunk = max(1, min(chunk, T))
    (k_p, v_p), valid_T, n_chunks = _pad_time((k, v), T, chunk)
    kv_c = (_to_chunks(k_p, n_chunks, chunk), _to_chunks(v_p, n_chunks, chunk))
    valid_c = valid_T.reshape(n_chunks, chunk)

    if mode == "sequential":
        def one_step(carry, inp_t):
            n, d, p = carry
            k_t, v_t, valid_t = inp_t
            out_t = output(p, n, d, k_t, v_t)
            _, p_new, n_new, d_new = _log_combine((0.0, p, n, d), (w, k_t, v_t, jnp.ones_like(k_t)))
            new = tuple(jnp.where(valid_t, x_new, x) for x_new, x in zip((n_new, d_new, p_new), carry))
            return new, out_t

        def chunk_body(carry, inp):
            (k_c, v_c), valid = inp
            carry, out = jax.lax.scan(one_step, carry,
                                      (jnp.moveaxis(k_c, 1, 0), jnp.moveaxis(v_c, 1, 0), valid))
            return carry, jnp.moveaxis(out, 0, 1)
    else:
        def chunk_body(carry, inp):
            kv, valid = inp
            return run_associative(carry, kv, valid)

    if n_chunks > 1:
        chunk_body = jax.checkpoint(chunk_body, prevent_cse=False)
    (n, d, p), out_c = jax.lax.scan(chunk_body, (n0, d0, p0), (kv_c, valid_c))
    return _from_chunks(out_c)[:, :T], (n, d, p)
