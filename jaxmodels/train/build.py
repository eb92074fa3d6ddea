"""Builds what the loop, the memory check and load_params share: optimizer, trainable mask,
fresh (or abstract) TrainState — so all three see exactly the same state structure."""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import jax
import ml_collections
import optax

from jaxmodels.train.optim import make_optimizer, store_params
from jaxmodels.train.state import TrainState, create_state

PyTree = Any


@dataclasses.dataclass
class Setup:
    optimizer: optax.GradientTransformation
    schedule: Callable
    trainable: Optional[PyTree]      # bool pytree or None (everything trains)
    abstract_params: PyTree
    abstract_state: TrainState


def loss_window_size(train_cfg: ml_collections.ConfigDict) -> int:
    """Length of the loss ring buffer the outlier skip needs (0: option off, no buffer)."""
    if float(train_cfg.get("skip_loss_z", 0.0) or 0.0) <= 0:
        return 0
    return int(train_cfg.get("skip_window", 128))


def root_keys(seed: int) -> tuple[jax.Array, jax.Array]:
    """(params-init key, training key) from the config seed."""
    root = jax.random.PRNGKey(int(seed))
    return jax.random.fold_in(root, 0), jax.random.fold_in(root, 1)


def _store_frozen(task, params: PyTree, trainable: Optional[PyTree]) -> PyTree:
    """Frozen leaves in the storage dtype `model.adapters.base_dtype` asks for (bf16 base)."""
    from jaxmodels.layers.adapters import storage_dtype_of, store_frozen

    dtype = storage_dtype_of(getattr(task, "model", None))
    return params if dtype is None else store_frozen(params, trainable, dtype)


def make_setup(task, cfg: ml_collections.ConfigDict) -> Setup:
    """Optimizer, schedule and abstract state (nothing allocated: jax.eval_shape only)."""
    init_key, train_key = root_keys(cfg.train.seed)
    abstract_params = jax.eval_shape(task.init_params, init_key)
    trainable = task.trainable_mask(abstract_params)
    abstract_params = _store_frozen(task, abstract_params, trainable)
    optimizer, schedule = make_optimizer(cfg.optim, int(cfg.train.steps), trainable)
    abstract_params = store_params(cfg.optim, abstract_params)
    ema_decay, window = float(cfg.train.ema_decay), loss_window_size(cfg.train)
    batch_size = int(cfg.train.batch_size)
    abstract_state = jax.eval_shape(lambda p, k: create_state(p, optimizer, k, ema_decay, window,
                                                              task.init_carry(batch_size)),
                                    abstract_params, train_key)
    return Setup(optimizer, schedule, trainable, abstract_params, abstract_state)


def fresh_state(task, cfg: ml_collections.ConfigDict, setup: Setup, sharding=None) -> TrainState:
    """Initialized params (or config.init_from's) wrapped in a new TrainState.

    sharding: one sharding for every leaf, or a TrainState of shardings (sharding.make_plan)."""
    init_key, train_key = root_keys(cfg.train.seed)
    # On a mesh the params are born sharded (a model too big for one device never is whole).
    params_sharding = getattr(sharding, "params", None)
    params = jax.jit(task.init_params, out_shardings=params_sharding)(init_key)
    if cfg.get("init_from", ""):
        params = task.load_init_from(params, cfg.init_from)
    params = store_params(cfg.optim, _store_frozen(task, params, setup.trainable))
    ema_decay, window = float(cfg.train.ema_decay), loss_window_size(cfg.train)
    batch_size = int(cfg.train.batch_size)
    make = jax.jit(lambda p, k: create_state(p, setup.optimizer, k, ema_decay, window,
                                             task.init_carry(batch_size)),
                   out_shardings=sharding)
    return make(params, train_key)
