"""The one jitted train step (gradient accumulation by lax.scan, weighted by aux["weight"])
and the eval step. The trainer never knows which model or task it runs.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxmodels.config import ConfigError
from jaxmodels.train import data_parallel
from jaxmodels.train.state import TrainState, ema_decay_at, update_ema

PyTree = Any
# fold_in tag of the optimizer's random stream, apart from the micro-batches' 0..k-1.
ROUNDING_STREAM = 0x7FFFFFFF


def make_mesh(mesh_cfg: ml_collections.ConfigDict) -> Optional[Mesh]:
    """The ("data", "fsdp", "tensor") mesh of mesh.py; None on a single device."""
    from jaxmodels.train.mesh import make_mesh as build
    return build(mesh_cfg)


def shardings(mesh: Optional[Mesh]):
    """(replicated, batch-split over data x fsdp) shardings; (None, None) without a mesh."""
    if mesh is None:
        return None, None
    from jaxmodels.train.mesh import batch_sharding
    return NamedSharding(mesh, P()), batch_sharding(mesh)


def _global_norm(tree) -> jax.Array:
    """sqrt(sum of squares) over all leaves, in f32."""
    return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(tree)))


def _all_finite(tree) -> jax.Array:
    """True when every float leaf of tree is free of NaN/inf (one fused reduction per leaf)."""
    checks = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
              if jnp.issubdtype(jnp.asarray(x).dtype, jnp.inexact)]
    return jnp.all(jnp.stack(checks)) if checks else jnp.bool_(True)


def _loss_z(window: dict, loss: jax.Array) -> jax.Array:
    """z-score of `loss` against the losses in the window (nan until the window is full,
    as in llm.c's outlier detector: no skipping on too few samples)."""
    losses, n = window["losses"], window["count"]
    mean = jnp.mean(losses)
    std = jnp.sqrt(jnp.mean(jnp.square(losses - mean)))
    z = (loss - mean) / jnp.maximum(std, 1e-12)
    return jnp.where(n >= losses.shape[0], z, jnp.nan)


def _push_loss(window: dict, loss: jax.Array) -> dict:
    """Adds a finite loss to the ring buffer (a NaN loss would poison every later z)."""
    losses, n = window["losses"], window["count"]
    ok = jnp.isfinite(loss)
    slot = n % losses.shape[0]
    return {"losses": jnp.where(ok, losses.at[slot].set(loss), losses), "count": n + ok.astype(n.dtype)}


def _split_micro(x: jax.Array, k: int) -> jax.Array:
    """[B, ...] -> [k, B/k, ...], micro-batch i holding examples i, i+k, i+2k, ... (strided, so
    each micro-batch stays spread over every data-parallel device)."""
    return jnp.swapaxes(x.reshape(x.shape[0] // k, k, *x.shape[1:]), 0, 1)


def _join_micro(x: jax.Array) -> jax.Array:
    """Inverse of _split_micro: [k, B/k, ...] -> [B, ...] in the batch's own row order."""
    return jnp.swapaxes(x, 0, 1).reshape(x.shape[0] * x.shape[1], *x.shape[2:])


def make_train_step(task, optimizer: optax.GradientTransformation, schedule: Callable,
                    train_cfg: ml_collections.ConfigDict, trainable: Optional[PyTree] = None,
                    mesh: Optional[Mesh] = None) -> Callable:
    """Returns the un-jitted `train_step(state, batch) -> (state, metrics)`.

    Gradients are taken only w.r.t. trainable leaves (frozen ones, e.g. quantized LoRA bases,
    may be integers) and accumulated over train.micro_batches micro-batches by lax.scan.
    On a mesh that only splits the batch (data_parallel.is_pure_data), each device takes the
    gradient of its own rows (its micro-batches are slices of those) and one weighted
    all-reduce combines them; jit it with the same mesh (jit_train_step).
    """
    k = int(train_cfg.micro_batches)
    batch_size = int(train_cfg.batch_size)
    if k < 1 or batch_size % k:
        raise ConfigError(f"train.batch_size={batch_size} must be a multiple of train.micro_batches={k}")
    ema_decay, ema_warmup = float(train_cfg.ema_decay), bool(train_cfg.ema_warmup)
    skip_z = float(train_cfg.get("skip_loss_z", 0.0) or 0.0)

    def loss_and_grads(params, batch, rng):
        leaves, treedef = jax.tree.flatten(params)
        mask = [True] * len(leaves) if trainable is None else jax.tree.leaves(trainable)
        if len(mask) != len(leaves):
            raise ValueError("task.trainable_mask must have the structure of params")

        def loss_of(train_leaves):
            it = iter(train_leaves)
            full = [next(it) if m else jax.lax.stop_gradient(x) for x, m in zip(leaves, mask)]
            return task.loss(treedef.unflatten(full), batch, rng, train=True)

        train_leaves = [x for x, m in zip(leaves, mask) if m]
        (loss, aux), grads = jax.value_and_grad(loss_of, has_aux=True)(train_leaves)
        carry = aux.pop("carry", None) if isinstance(aux, dict) else None
        aux = {name: jnp.asarray(v, jnp.float32) for name, v in {"weight": 1.0, **aux}.items()}
        if carry is not None:  # the state the next window starts from (tasks/carry.py): not averaged
            aux["carry"] = carry
        return jnp.asarray(loss, jnp.float32), aux, grads

    def expand(params, train_grads):
        """Trainable-leaf grads -> a full grads tree (zeros, never materialized, for frozen)."""
        leaves, treedef = jax.tree.flatten(params)
        mask = [True] * len(leaves) if trainable is None else jax.tree.leaves(trainable)
        it = iter(train_grads)
        return treedef.unflatten([next(it) if m else jnp.zeros_like(x) for x, m in zip(leaves, mask)])

    def accumulated(params, batch, rng):
        if k == 1:
            loss, aux, grads = loss_and_grads(params, batch, jax.random.fold_in(rng, 0))
            return loss, aux, grads
        micro = jax.tree.map(lambda x: _split_micro(x, k), batch)
        first = jax.tree.map(lambda x: x[0], micro)
        shapes = jax.eval_shape(loss_and_grads, params, first, rng)
        shapes[1].pop("carry", None)
        zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, jnp.float32), shapes)

        def body(carry, xs):
            mb, i = xs
            loss, aux, grads = loss_and_grads(params, mb, jax.random.fold_in(rng, i))
            new_carry = aux.pop("carry", None)
            w = aux["weight"]
            scaled = (loss * w, {n: (v if n == "weight" else v * w) for n, v in aux.items()},
                      jax.tree.map(lambda g: g.astype(jnp.float32) * w, grads))
            return jax.tree.map(jnp.add, carry, scaled), new_carry

        (loss_s, aux_s, grads_s), carries = jax.lax.scan(body, zeros, (micro, jnp.arange(k)))
        total = aux_s["weight"]
        aux = {n: (v if n == "weight" else v / total) for n, v in aux_s.items()}
        if carries is not None:  # each micro-batch's rows back in their places
            aux["carry"] = jax.tree.map(_join_micro, carries)
        return loss_s / total, aux, jax.tree.map(lambda g: g / total, grads_s)

    grads_of = data_parallel.per_device_grads(accumulated, mesh) if data_parallel.is_pure_data(mesh) else accumulated

    def train_step(state: TrainState, batch) -> tuple[TrainState, dict]:
        rng = jax.random.fold_in(state.rng, state.step)
        if state.carry is not None:  # task.carry_state: each row continues from its last window
            batch = {**batch, "carry": state.carry}
        loss, aux, train_grads = grads_of(state.params, batch, rng)
        new_carry = aux.pop("carry", None)
        grads = expand(state.params, train_grads)
        fused = getattr(optimizer, "apply_to_params", None)
        if fused is not None:  # gradient -> new parameter leaf by leaf (train/adam8bit.py)
            # (the key only matters for bf16-stored params: their stochastic rounding)
            params, opt_state = fused(grads, state.opt_state, state.params,
                                      key=jax.random.fold_in(rng, ROUNDING_STREAM))
        else:
            updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
            params = optax.apply_updates(state.params, updates)
        if trainable is not None:
            # Frozen leaves pass through untouched (not p + 0): no new buffer, no f32 detour
            # for a bf16 / NF4 base the size of the model.
            params = jax.tree.map(lambda new, old, m: new if m else old, params, state.params, trainable)
        ema = state.ema
        if ema is not None:
            ema = update_ema(ema, params, ema_decay_at(state.step, ema_decay, ema_warmup))
        grad_norm = _global_norm(train_grads)
        metrics = {**aux, "loss": loss, "grad_norm": grad_norm,
                   "lr": jnp.asarray(schedule(state.step), jnp.float32)}
        # Is the state this step produces finite? The loss and gradient only describe the
        # params *before* the update (lr=1e39 gives a finite loss and inf params), so the
        # loop refuses to save (or, with skip_loss_z, the step drops) on this flag. Frozen
        # leaves never change and are not checked; the EMA is a convex mix of finite params.
        leaves = jax.tree.leaves(params)
        mask = [True] * len(leaves) if trainable is None else jax.tree.leaves(trainable)
        finite = (_all_finite(([x for x, m in zip(leaves, mask) if m], opt_state))
                  & jnp.isfinite(loss) & jnp.isfinite(grad_norm))
        metrics["finite"] = finite.astype(jnp.float32)
        window = state.loss_window
        if skip_z > 0:
            # llm.c-style: drop the update of a step whose loss is a z-score outlier against the
            # recent window, or whose new state is not finite; the step still counts (data moves on).
            z = _loss_z(window, loss)
            keep = finite & ~(z > skip_z)
            pick = lambda new, old: jax.tree.map(lambda a, b: jnp.where(keep, a, b), new, old)  # noqa: E731
            params, opt_state = pick(params, state.params), pick(opt_state, state.opt_state)
            ema = None if ema is None else pick(ema, state.ema)
            window = _push_loss(window, loss)
            metrics["skipped"] = (~keep).astype(jnp.float32)
            metrics["loss_z"] = jnp.nan_to_num(z, nan=0.0)
        new_state = state.replace(params=params, opt_state=opt_state, step=state.step + 1, ema=ema,
                                  loss_window=window)
        if new_carry is not None:
            new_state = new_state.replace(carry=new_carry)
        return new_state, metrics

    return train_step


def jit_train_step(train_step: Callable, mesh: Optional[Mesh] = None, state_sharding=None) -> Callable:
    """jax.jit with the state donated; on a mesh, the batch split over data x fsdp and the
    state placed by state_sharding (sharding.make_plan; default replicated). The outputs are
    pinned to the same shardings, so no step re-shards the state."""
    if mesh is None:
        return jax.jit(train_step, donate_argnums=0)
    replicated, split = shardings(mesh)
    state = replicated if state_sharding is None else state_sharding
    return jax.jit(train_step, donate_argnums=0, in_shardings=(state, split),
                   out_shardings=(state, replicated))


def make_eval_step(task, mesh: Optional[Mesh] = None, params_sharding=None) -> Callable:
    """Jitted `eval_step(params, batch) -> (loss, aux)` with train=False and a fixed rng
    (per device on a mesh that only splits the batch, as the train step)."""
    def eval_loss(params, batch, rng):
        loss, aux = task.loss(params, batch, rng, train=False)
        return jnp.asarray(loss, jnp.float32), {n: jnp.asarray(v, jnp.float32) for n, v in aux.items()}
    if data_parallel.is_pure_data(mesh):
        eval_loss = data_parallel.per_device_eval(eval_loss, mesh)

    def eval_step(params, batch):
        return eval_loss(params, batch, jax.random.PRNGKey(0))
    if mesh is None:
        return jax.jit(eval_step)
    replicated, split = shardings(mesh)
    params = replicated if params_sharding is None else params_sharding
    return jax.jit(eval_step, in_shardings=(params, split), out_shardings=replicated)
