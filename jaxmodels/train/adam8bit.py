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

from typing import Any, Callable, NamedTuple, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxmodels.train.rounding import stochastic_round

BLOCK = 256
MIN_SIZE = 4096
# A quantised leaf that is not a stack (an embedding, a tied 128k-vocabulary head) is updated
# in slices of at most CHUNK values (whole blocks, so each slice's arithmetic is the whole
# leaf's; bf16-stored params draw their rounding noise per slice): updated whole, its
# de-quantised moments and their new values are four f32 copies of the leaf, held at once
# (4 GiB for LLaMA-3.2 1B's 128k x 2048 embedding).
CHUNK = 1 << 22


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


def _stacked(p) -> bool:
    """A scanned stack [n_layers, ...] with quantised moments: quantised and updated layer by
    layer, so the f32 temporaries of the update are one layer's, not the whole stack's."""
    return p.ndim >= 3 and _quantized(p)


def _init_moments(params) -> tuple:
    def zeros(p, code):
        # All-zero moments: every index points at the code's 0 (built directly: quantising
        # a zeros array would be constant-folded at compile time, slowly).
        if not _quantized(p):
            return jnp.zeros(p.shape, jnp.float32)
        lead = p.shape[:1] if _stacked(p) else ()
        n = int(np.prod(p.shape[len(lead):]))
        n_pad = n + (-n % BLOCK)
        zero = int(np.searchsorted(code, 0.0))
        return {"q": jnp.full(lead + (n_pad,), zero, jnp.uint8),
                "absmax": jnp.zeros(lead + (n_pad // BLOCK,), jnp.float32)}
    return jax.tree.map(lambda p: zeros(p, SIGNED), params), jax.tree.map(lambda p: zeros(p, UNSIGNED), params)


def _adam_leaf(g, m, v, b1, b2, eps, c1, c2):
    """One leaf (or one layer of a stack): (Adam direction in f32, new m, new v), the moments
    de-quantised, moved and re-quantised (or kept in f32 for small leaves)."""
    g32 = g.astype(jnp.float32)
    small = not isinstance(m, dict)
    m32 = m if small else dequantize(m, SIGNED, g.shape)
    v32 = v if small else dequantize(v, UNSIGNED, g.shape)
    m32 = b1 * m32 + (1 - b1) * g32
    v32 = b2 * v32 + (1 - b2) * jnp.square(g32)
    u = (m32 / c1) / (jnp.sqrt(v32 / c2) + eps)
    return u, (m32 if small else quantize(m32, SIGNED)), (v32 if small else quantize(v32, UNSIGNED))


def _bias_corrections(count, b1, b2):
    return 1 - b1 ** count.astype(jnp.float32), 1 - b2 ** count.astype(jnp.float32)


def scale_by_adam_8bit(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8) -> optax.GradientTransformation:
    """optax.scale_by_adam with 8-bit blockwise moments (drop-in: same update rule)."""

    def init(params):
        mu, nu = _init_moments(params)
        return Adam8bitState(count=jnp.zeros((), jnp.int32), mu=mu, nu=nu)

    def update(updates, state, params=None):
        del params
        count = optax.safe_increment(state.count)
        c1, c2 = _bias_corrections(count, b1, b2)

        def one(g, m, v):
            u, m, v = _adam_leaf(g, m, v, b1, b2, eps, c1, c2)
            return u.astype(g.dtype), m, v

        treedef = jax.tree.structure(updates)
        grads = treedef.flatten_up_to(updates)
        mus, nus = treedef.flatten_up_to(state.mu), treedef.flatten_up_to(state.nu)
        out, new_mu, new_nu = [], [], []
        for g, m, v in zip(grads, mus, nus):
            u, m, v = jax.lax.map(lambda a: one(*a), (g, m, v)) if _stacked(g) else one(g, m, v)
            out.append(u)
            new_mu.append(m)
            new_nu.append(v)
        unflat = lambda xs: treedef.unflatten(xs)  # noqa: E731
        return unflat(out), Adam8bitState(count=count, mu=unflat(new_mu), nu=unflat(new_nu))

    return optax.GradientTransformation(init, update)


class FusedTransformation(NamedTuple):
    """An optax transformation (init, update) that can also write the parameters itself:
    apply_to_params(grads, state, params, key=None) -> (new params, new state), the same
    result as update + optax.apply_updates without a full-size tree of updates in between
    (key: stochastic rounding of bf16-stored parameters)."""
    init: Callable
    update: Callable
    apply_to_params: Callable


def _layer_loop(fn, n: int, grads_and_consts, carry):
    """for i < n: carry[i] = fn(grads_and_consts[i], carry[i], i) along the leading axis, in
    place (a while loop whose carry is updated by dynamic_update_slice aliases its buffers,
    where lax.map would build the stacked result in a second buffer)."""
    def body(i, c):
        take = lambda t: jax.tree.map(lambda x: jax.lax.dynamic_index_in_dim(x, i, keepdims=False), t)  # noqa: E731
        new = fn(take(grads_and_consts), take(c), i)
        return jax.tree.map(lambda x, y: jax.lax.dynamic_update_index_in_dim(x, y.astype(x.dtype), i, 0), c, new)
    return jax.lax.fori_loop(0, n, body, carry)


def _chunk_size(p) -> int:
    """Values per slice for an unstacked quantised leaf larger than CHUNK: the largest
    multiple of BLOCK up to CHUNK that divides its size, so the slices are equal, hold whole
    blocks and need no padding (0: update the leaf whole: no such slice, or one under
    CHUNK / 64 values, too many loop steps)."""
    n = int(np.prod(p.shape))
    if not _quantized(p) or _stacked(p) or n <= CHUNK or n % BLOCK:
        return 0
    blocks = n // BLOCK
    best = max(d for d in range(1, CHUNK // BLOCK + 1) if blocks % d == 0)
    return best * BLOCK if best * BLOCK * 64 >= CHUNK else 0


def _chunk_loop(fn, g, mvp, chunk: int):
    """fn over the leaf in equal slices of `chunk` values, written back in place: the flat
    leaf and its moments are viewed as [n / chunk, ...] stacks (free reshapes of the same
    bytes: the moments' blocks are the leaf's in order) and walked by _layer_loop."""
    m, v, p = mvp
    k = p.size // chunk
    rows = lambda t: jax.tree.map(lambda x: x.reshape(k, -1), t)  # noqa: E731
    m, v, new_p = _layer_loop(fn, k, rows(g), rows((m, v, p)))
    flat = lambda t: jax.tree.map(lambda x: x.reshape(-1), t)  # noqa: E731
    return flat(m), flat(v), new_p.reshape(p.shape)


def adamw_8bit(schedule: Callable, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
               clip_norm: float = 0.0, weight_decay: Union[float, Callable] = 0.0,
               decay_mask: Optional[Callable] = None) -> FusedTransformation:
    """The whole AdamW step with 8-bit moments as one transformation: global-norm clipping
    (clip_norm > 0), the Adam direction, decoupled weight decay where decay_mask(params) is
    True, and the learning rate `schedule(count)`; the same arithmetic as
    optax.chain(clip_by_global_norm, scale_by_adam_8bit, add_decayed_weights,
    scale_by_learning_rate).

    Chained, each stage returns a full-size f32 tree and the layer-by-layer 8-bit update
    needs its input and output materialised, so a step holds gradients, clipped gradients and
    updates, three f32 copies of the model. Here the clip factor is a scalar computed first,
    and apply_to_params walks each leaf (a stacked leaf layer by layer, in place) from
    gradient to new parameter: only the gradients are full-size.
    """

    def init(params):
        mu, nu = _init_moments(params)
        return Adam8bitState(count=jnp.zeros((), jnp.int32), mu=mu, nu=nu)

    def consts(grads, count):
        """(clip factor, lr, weight decay, c1, c2), scalars for this step; count = updates so far."""
        if clip_norm > 0:
            norm = jnp.sqrt(sum(jnp.sum(jnp.square(g.astype(jnp.float32))) for g in jax.tree.leaves(grads)))
            factor = jnp.where(norm < clip_norm, 1.0, clip_norm / norm)
        else:
            factor = jnp.float32(1.0)
        lr = jnp.asarray(schedule(count), jnp.float32)
        wd = jnp.asarray(weight_decay(count) if callable(weight_decay) else weight_decay, jnp.float32)
        c1, c2 = _bias_corrections(optax.safe_increment(count), b1, b2)
        return factor, lr, wd, c1, c2

    def leaves(grads, state, params):
        treedef = jax.tree.structure(params)
        mask = (decay_mask(params) if decay_mask is not None
                else jax.tree.map(lambda _: False, params))
        flat = lambda t: treedef.flatten_up_to(t)  # noqa: E731
        return treedef, list(zip(flat(grads), flat(state.mu), flat(state.nu), flat(params), flat(mask)))

    def step_fn(decay, c):
        factor, lr, wd, c1, c2 = c

        def delta(g, m, v, p):
            u, m, v = _adam_leaf(g * factor, m, v, b1, b2, eps, c1, c2)
            if decay:
                u = u + wd * p.astype(jnp.float32)
            return -lr * u, m, v
        return delta

    def update(grads, state, params=None):
        if params is None:
            raise ValueError("adamw_8bit needs params (weight decay reads them)")
        c = consts(grads, state.count)
        treedef, items = leaves(grads, state, params)
        out, mus, nus = [], [], []
        for g, m, v, p, decay in items:
            delta = step_fn(decay, c)

            def one(a):
                d, m, v = delta(*a)
                return d.astype(a[3].dtype), m, v
            u, m, v = jax.lax.map(one, (g, m, v, p)) if _stacked(g) else one((g, m, v, p))
            out.append(u)
            mus.append(m)
            nus.append(v)
        unflat = treedef.unflatten
        return unflat(out), Adam8bitState(count=optax.safe_increment(state.count), mu=unflat(mus), nu=unflat(nus))

    def apply_to_params(grads, state, params, key=None):
        """key: for parameters stored in bf16, the new value is stochastically rounded
        (train/rounding.py) with keys folded from it; without one they round to nearest."""
        c = consts(grads, state.count)
        treedef, items = leaves(grads, state, params)
        new_p, mus, nus = [], [], []
        for i, (g, m, v, p, decay) in enumerate(items):
            delta = step_fn(decay, c)
            leaf_key = None if key is None or p.dtype != jnp.bfloat16 else jax.random.fold_in(key, i)

            def store(x, layer):
                if leaf_key is None:
                    return x.astype(p.dtype)
                return stochastic_round(x, leaf_key if layer is None else jax.random.fold_in(leaf_key, layer))

            def one(g, mvp, layer=None):
                m, v, p = mvp
                d, m, v = delta(g, m, v, p)
                return m, v, store(p.astype(jnp.float32) + d, layer)
            chunk = _chunk_size(g)  # 0 for stacked leaves and small ones
            if _stacked(g):
                m, v, p = _layer_loop(one, p.shape[0], g, (m, v, p))
            elif chunk:
                m, v, p = _chunk_loop(one, g, (m, v, p), chunk)
            else:
                m, v, p = one(g, (m, v, p))
            new_p.append(p)
            mus.append(m)
            nus.append(v)
        unflat = treedef.unflatten
        return unflat(new_p), Adam8bitState(count=optax.safe_increment(state.count), mu=unflat(mus), nu=unflat(nus))

    return FusedTransformation(init, update, apply_to_params)
