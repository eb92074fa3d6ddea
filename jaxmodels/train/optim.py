"""AdamW with warmup + cosine (or constant) learning rate, global-norm clipping, weight decay
only on matrices, and a trainable mask (LoRA/adapters) expressed as an optax mask.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import ml_collections
import optax

from jaxmodels.config import ConfigError

PyTree = Any

# Leaf names that are never decayed even when a scanned stack gives them a leading
# [n_layers] axis (a LayerNorm scale in a scan is 2-D, but still a norm).
NO_DECAY_NAMES = ("bias", "scale")


def lr_schedule(optim_cfg: ml_collections.ConfigDict, total_steps: int) -> Callable[[Any], jax.Array]:
    """step -> learning rate: linear warmup to `lr`, then cosine to `min_lr` (or constant).

    Warmup is (step+1)/(warmup+1)*lr so the very first update is not a no-op. decay_steps
    (-1: total_steps) counts from step 0, warmup included, as in nanoGPT.
    """
    peak, floor = float(optim_cfg.lr), float(optim_cfg.min_lr)
    warmup = int(optim_cfg.warmup_steps)
    decay = int(optim_cfg.decay_steps) if int(optim_cfg.decay_steps) > 0 else int(total_steps)
    kind = optim_cfg.schedule
    if kind not in ("cosine", "constant"):
        raise ConfigError(f"unknown optim.schedule {kind!r}; valid: constant, cosine")

    def schedule(step):
        step = jnp.asarray(step, jnp.float32)
        warm = peak * (step + 1.0) / (warmup + 1.0)
        if kind == "constant":
            after = jnp.full_like(step, peak)
        else:
            progress = jnp.clip((step - warmup) / max(1, decay - warmup), 0.0, 1.0)
            after = floor + 0.5 * (peak - floor) * (1.0 + jnp.cos(math.pi * progress))
        return jnp.where(step < warmup, warm, after)

    return schedule


def _leaf_name(path) -> str:
    last = path[-1] if path else None
    for attr in ("key", "name", "idx"):
        if hasattr(last, attr):
            return str(getattr(last, attr))
    return str(last)


def decay_mask(params: PyTree) -> PyTree:
    """True where weight decay applies: leaves with ndim >= 2 that are not norms or biases."""
    return jax.tree_util.tree_map_with_path(
        lambda path, p: bool(jnp.ndim(p) >= 2 and _leaf_name(path) not in NO_DECAY_NAMES), params)


def make_optimizer(optim_cfg: ml_collections.ConfigDict, total_steps: int,
                   trainable: Optional[PyTree] = None) -> tuple[optax.GradientTransformation, Callable]:
    """Returns (optimizer, lr schedule).

    trainable: bool pytree (from task.trainable_mask) or None for "everything trains".
    Frozen leaves go through optax.set_to_zero, so they keep no Adam moments.
    """
    schedule = lr_schedule(optim_cfg, total_steps)
    parts = []
    if float(optim_cfg.clip_norm) > 0:
        parts.append(optax.clip_by_global_norm(float(optim_cfg.clip_norm)))
    parts.append(optax.scale_by_adam(b1=float(optim_cfg.b1), b2=float(optim_cfg.b2), eps=float(optim_cfg.eps)))
    if float(optim_cfg.weight_decay) > 0:
        parts.append(optax.add_decayed_weights(float(optim_cfg.weight_decay), mask=decay_mask))
    parts.append(optax.scale_by_learning_rate(schedule))
    adamw = optax.chain(*parts)
    if trainable is None:
        return adamw, schedule
    labels = jax.tree.map(lambda t: "train" if t else "freeze", trainable)
    return optax.multi_transform({"train": adamw, "freeze": optax.set_to_zero()}, labels), schedule
