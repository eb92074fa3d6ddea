"""AdamW with warmup + cosine (or constant) learning rate, global-norm clipping, weight decay
only on matrices, and a trainable mask (LoRA/adapters) expressed as an optax mask.

optim.kind picks how the per-parameter state is kept (same schedule, clipping and decay):
  "adamw"      f32 first and second moments (8 bytes per trained parameter);
  "adamw8bit"  both moments in 8-bit blockwise dynamic quantisation (train/adam8bit.py,
               ~2 bytes per parameter, the update rule unchanged);
  "adafactor"  optax's factored second moment (row + column statistics of each matrix, no
               first moment; Shazeer & Stern 2018) with Adafactor's update clipping.
"adamw8bit" is one fused transformation (clip, Adam, decay, lr) whose apply_to_params writes
the parameters itself, holding no full-size update tree; it alone can keep the trained
params in bf16 (optim.param_dtype="bfloat16") with stochastic rounding.
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


SCHEDULES = ("constant", "cosine", "two_stage")
KINDS = ("adamw", "adamw8bit", "adafactor")


def _decay_steps(optim_cfg, total_steps: int) -> int:
    return int(optim_cfg.decay_steps) if int(optim_cfg.decay_steps) > 0 else int(total_steps)


def stage2_start(optim_cfg: ml_collections.ConfigDict, total_steps: int) -> int:
    """First step of stage 2 of the two-stage recipe: optim.stage2_at (default 0.5) of the
    decay horizon."""
    at = float(optim_cfg.get("stage2_at", 0.5))
    if not 0.0 < at <= 1.0:
        raise ConfigError(f"optim.stage2_at={at} must be in (0, 1] (the fraction of training before the cooldown)")
    return int(round(at * _decay_steps(optim_cfg, total_steps)))


def lr_schedule(optim_cfg: ml_collections.ConfigDict, total_steps: int) -> Callable[[Any], jax.Array]:
    """step -> learning rate: linear warmup to `lr`, then cosine to `min_lr` (or constant).

    Warmup is (step+1)/(warmup+1)*lr so the very first update is not a no-op. decay_steps
    (-1: total_steps) counts from step 0, warmup included, as in nanoGPT.

    "two_stage" (BitNet b1.58, Training Tips; 2B4T report sec. 3.1): stage 1 is the cosine
    from a high peak `lr`; at step stage2_start (optim.stage2_at of the horizon, default
    half way) the rate drops abruptly to optim.stage2_lr and stage 2 is a cosine from there
    to `min_lr` at the end of the horizon.
    """
    peak, floor = float(optim_cfg.lr), float(optim_cfg.min_lr)
    warmup = int(optim_cfg.warmup_steps)
    decay = _decay_steps(optim_cfg, total_steps)
    kind = optim_cfg.schedule
    if kind not in SCHEDULES:
        raise ConfigError(f"unknown optim.schedule {kind!r}; valid: {', '.join(SCHEDULES)}")
    if kind == "two_stage":
        if "stage2_lr" not in optim_cfg:
            raise ConfigError("optim.schedule='two_stage' needs optim.stage2_lr (the rate after the cooldown)")
        cool, peak2 = stage2_start(optim_cfg, total_steps), float(optim_cfg.stage2_lr)

    def cosine(step, start, top, end):
        progress = jnp.clip((step - start) / max(1, end - start), 0.0, 1.0)
        return floor + 0.5 * (top - floor) * (1.0 + jnp.cos(math.pi * progress))

    def schedule(step):
        step = jnp.asarray(step, jnp.float32)
        warm = peak * (step + 1.0) / (warmup + 1.0)
        if kind == "constant":
            after = jnp.full_like(step, peak)
        elif kind == "cosine":
            after = cosine(step, warmup, peak, decay)
        else:
            after = jnp.where(step < cool, cosine(step, warmup, peak, decay), cosine(step, cool, peak2, decay))
        return jnp.where(step < warmup, warm, after)

    return schedule


def weight_decay_schedule(optim_cfg: ml_collections.ConfigDict, total_steps: int):
    """The weight decay: optim.weight_decay, or with optim.stage2_weight_decay set (>= 0)
    and the two-stage schedule, weight_decay in stage 1 and stage2_weight_decay from
    stage2_start on (BitNet: 0.1, then 0). Returns a float or a step -> value callable."""
    wd = float(optim_cfg.weight_decay)
    wd2 = float(optim_cfg.get("stage2_weight_decay", -1.0))
    if wd2 < 0:
        return wd
    if optim_cfg.schedule != "two_stage":
        raise ConfigError("optim.stage2_weight_decay needs optim.schedule='two_stage' (it switches at stage 2)")
    cool = stage2_start(optim_cfg, total_steps)
    return lambda step: jnp.where(jnp.asarray(step) < cool, wd, wd2).astype(jnp.float32)


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


def _scale_by_moments(optim_cfg: ml_collections.ConfigDict) -> list:
    """The per-parameter preconditioner optim.kind names (see the module docstring)."""
    kind = optim_cfg.get("kind", "adamw")
    b1, b2, eps = float(optim_cfg.b1), float(optim_cfg.b2), float(optim_cfg.eps)
    if kind == "adamw":
        return [optax.scale_by_adam(b1=b1, b2=b2, eps=eps)]
    if kind == "adafactor":
        # Adafactor's own defaults (decay 0.8, eps 1e-30, update RMS clipped at 1).
        return [optax.scale_by_factored_rms(), optax.clip_by_block_rms(1.0)]
    raise ConfigError(f"unknown optim.kind {kind!r}; valid: {', '.join(KINDS)}")


def make_optimizer(optim_cfg: ml_collections.ConfigDict, total_steps: int,
                   trainable: Optional[PyTree] = None) -> tuple[optax.GradientTransformation, Callable]:
    """Returns (optimizer, lr schedule).

    trainable: bool pytree (from task.trainable_mask) or None for "everything trains".
    Frozen leaves go through optax.set_to_zero, so they keep no Adam moments.
    With optim.kind="adamw8bit" and no mask the optimizer also has apply_to_params (the
    train step's fused path, train/adam8bit.py).
    """
    schedule = lr_schedule(optim_cfg, total_steps)
    check_param_dtype(optim_cfg, trainable)
    if optim_cfg.get("kind", "adamw") == "adamw8bit":
        # One fused transformation (clip, 8-bit Adam, decay, lr): the chain below would hold
        # three full-size f32 trees in a step (train/adam8bit.py, adamw_8bit).
        from jaxmodels.train.adam8bit import adamw_8bit

        adamw = adamw_8bit(schedule, b1=float(optim_cfg.b1), b2=float(optim_cfg.b2), eps=float(optim_cfg.eps),
                           clip_norm=float(optim_cfg.clip_norm),
                           weight_decay=weight_decay_schedule(optim_cfg, total_steps), decay_mask=decay_mask)
        return _masked(adamw, trainable), schedule
    parts = []
    if float(optim_cfg.clip_norm) > 0:
        parts.append(optax.clip_by_global_norm(float(optim_cfg.clip_norm)))
    parts.extend(_scale_by_moments(optim_cfg))
    wd = weight_decay_schedule(optim_cfg, total_steps)
    if callable(wd) or wd > 0:
        # A schedule counts optimizer updates from 0, i.e. the step (the count is checkpointed).
        parts.append(optax.add_decayed_weights(wd, mask=decay_mask))
    parts.append(optax.scale_by_learning_rate(schedule))
    return _masked(optax.chain(*parts), trainable), schedule


PARAM_DTYPES = ("float32", "bfloat16")


def check_param_dtype(optim_cfg: ml_collections.ConfigDict, trainable: Optional[PyTree]) -> str:
    """optim.param_dtype: "float32" (default) or "bfloat16" (trained params stored in bf16,
    updated with stochastic rounding by the fused 8-bit step, train/rounding.py)."""
    dtype = optim_cfg.get("param_dtype", "float32")
    if dtype not in PARAM_DTYPES:
        raise ConfigError(f"unknown optim.param_dtype {dtype!r}; valid: {', '.join(PARAM_DTYPES)}")
    if dtype == "bfloat16" and (optim_cfg.get("kind", "adamw") != "adamw8bit" or trainable is not None):
        raise ConfigError("optim.param_dtype='bfloat16' needs --config.optim.kind=adamw8bit and full training "
                          "(no adapters / trainable mask): only that fused step rounds bf16 params stochastically")
    return dtype


def store_params(optim_cfg: ml_collections.ConfigDict, params: PyTree) -> PyTree:
    """params in the storage dtype optim.param_dtype names (float leaves only; traceable)."""
    if optim_cfg.get("param_dtype", "float32") != "bfloat16":
        return params

    def one(p):
        if not jnp.issubdtype(p.dtype, jnp.floating):
            return p
        if isinstance(p, jax.ShapeDtypeStruct):
            return jax.ShapeDtypeStruct(p.shape, jnp.bfloat16, sharding=p.sharding)
        return p.astype(jnp.bfloat16)
    return jax.tree.map(one, params)


def _masked(adamw: optax.GradientTransformation, trainable: Optional[PyTree]) -> optax.GradientTransformation:
    if trainable is None:
        return adamw
    labels = jax.tree.map(lambda t: "train" if t else "freeze", trainable)
    return optax.multi_transform({"train": adamw, "freeze": optax.set_to_zero()}, labels)
