"""TrainState: everything a run needs to continue exactly (params, optimizer, EMA, step, rng)."""
from __future__ import annotations

from typing import Any, Optional

import flax.struct
import jax
import jax.numpy as jnp
import optax

PyTree = Any


class TrainState(flax.struct.PyTreeNode):
    """A pytree; `step` counts finished optimizer steps; `rng` is a raw uint32[2] key
    (checkpoints store plain arrays); `ema` is None when train.ema_decay == 0; `loss_window`
    (the last train.skip_window losses, for the z-score outlier skip) is None when
    train.skip_loss_z == 0, so runs without the option keep their checkpoint layout."""
    params: PyTree
    opt_state: PyTree
    step: jax.Array
    rng: jax.Array
    ema: Optional[PyTree] = None
    loss_window: Optional[PyTree] = None
    # The recurrent state carried from window to window (task.carry_state, tasks/carry.py);
    # None otherwise, so other runs keep their checkpoint layout.
    carry: Optional[PyTree] = None


def create_state(params: PyTree, optimizer: optax.GradientTransformation, rng: jax.Array,
                 ema_decay: float, loss_window: int = 0, carry: Optional[PyTree] = None) -> TrainState:
    """Fresh state for params (traceable: memory estimates build it under jax.eval_shape).

    rng: a raw uint32[2] key (jax.random.PRNGKey), the root of every per-step key."""
    ema = jax.tree.map(jnp.copy, params) if ema_decay > 0 else None
    window = None
    if loss_window > 0:  # a ring buffer of recent losses and how many were pushed
        window = {"losses": jnp.zeros((int(loss_window),), jnp.float32), "count": jnp.zeros((), jnp.int32)}
    return TrainState(params=params, opt_state=optimizer.init(params),
                      step=jnp.zeros((), jnp.int32), rng=rng, ema=ema, loss_window=window, carry=carry)


def ema_decay_at(step: jax.Array, decay: float, warmup: bool) -> jax.Array:
    """EMA decay for the update made after `step` updates: min(decay, (1+n)/(10+n)) with warm-up."""
    decay = jnp.float32(decay)
    if not warmup:
        return decay
    n = jnp.asarray(step, jnp.float32)
    return jnp.minimum(decay, (1.0 + n) / (10.0 + n))


def update_ema(ema: PyTree, params: PyTree, decay: jax.Array) -> PyTree:
    """ema <- decay * ema + (1 - decay) * params, leaf by leaf (non-float leaves copied)."""
    def one(e, p):
        if not jnp.issubdtype(p.dtype, jnp.floating):
            return p
        return (decay * e.astype(jnp.float32) + (1.0 - decay) * p.astype(jnp.float32)).astype(e.dtype)
    return jax.tree.map(one, ema, params)
