"""Run as a program with 2 forced host devices (the flag must be set before jax starts, so
tests/sharding/test_data_parallel.py starts this in a subprocess):

    XLA_FLAGS=--xla_force_host_platform_device_count=2 python -m tests.sharding.data_parallel_step

Prints one JSON line comparing the per-device (shard_map) data-parallel train and eval steps
with the single-device ones, and what the compiled data-parallel step communicates.
"""
import json
import os

assert "xla_force_host_platform_device_count=2" in os.environ.get("XLA_FLAGS", ""), "set XLA_FLAGS first"

import jax  # noqa: E402

from jaxmodels.train.build import fresh_state  # noqa: E402
from jaxmodels.train.sharding import make_plan  # noqa: E402
from jaxmodels.train.step import jit_train_step, make_eval_step, make_train_step  # noqa: E402
from tests.sharding.mesh_step import _max_diff, one_device_setup  # noqa: E402


def _dp(cfg, task, setup, state0, batch):
    """One data-parallel step on 2 devices: (new state, metrics, compiled HLO text)."""
    cfg.mesh.data = 2
    plan = make_plan(cfg, setup.abstract_state)
    step = jit_train_step(make_train_step(task, setup.optimizer, setup.schedule, cfg.train, setup.trainable,
                                          plan.mesh), plan.mesh, plan.state)
    state = jax.device_put(state0, plan.state)
    placed = {k: jax.device_put(v, plan.batch) for k, v in batch.items()}
    hlo = step.lower(state, placed).compile().as_text()
    new, metrics = step(state, placed)
    return new, metrics, hlo, plan


def deterministic(spec, overrides) -> dict:
    """A loss without randomness: the data-parallel step is the single-device step."""
    cfg, task, setup, batch = one_device_setup(spec, overrides)
    state0 = jax.device_get(fresh_state(task, cfg, setup))
    single = make_train_step(task, setup.optimizer, setup.schedule, cfg.train, setup.trainable)
    ref, ref_metrics = jit_train_step(single)(jax.device_put(state0), batch)
    ref_eval = make_eval_step(task)(jax.device_put(state0.params), batch)
    new, metrics, hlo, plan = _dp(cfg, task, setup, state0, batch)
    placed = {k: jax.device_put(v, plan.batch) for k, v in batch.items()}
    dp_eval = make_eval_step(task, plan.mesh, plan.params)(jax.device_put(state0.params, plan.params), placed)
    return {"params_diff": _max_diff(new.params, ref.params), "opt_diff": _max_diff(new.opt_state, ref.opt_state),
            "loss_diff": abs(float(metrics["loss"]) - float(ref_metrics["loss"])),
            "eval_diff": _max_diff(dp_eval, ref_eval),
            "all_gathers": hlo.count("all-gather("), "all_reduces": hlo.count("all-reduce("),
            "custom_calls": hlo.count("custom_call_target=\"jaxmodels_cpu")}


def random_loss(spec, overrides) -> dict:
    """A loss that draws noise: each device its own stream (the step's key folded with the
    device's index), so the loss is the mean of the two halves' single-device losses under
    those keys, and differs from the loss with both halves on one key."""
    cfg, task, setup, batch = one_device_setup(spec, overrides)
    state0 = jax.device_get(fresh_state(task, cfg, setup))
    _, metrics, _, _ = _dp(cfg, task, setup, state0, batch)
    rng = jax.random.fold_in(state0.rng, state0.step)
    half = len(next(iter(batch.values()))) // 2
    loss = jax.jit(lambda p, b, r: task.loss(p, b, r, train=True)[0])
    per_device, same_key = [], []
    for d in range(2):
        rows = {k: v[d * half:(d + 1) * half] for k, v in batch.items()}
        # train.step: k=1 micro-batch draws from fold_in(key, 0)
        per_device.append(float(loss(state0.params, rows, jax.random.fold_in(jax.random.fold_in(rng, d), 0))))
        same_key.append(float(loss(state0.params, rows, jax.random.fold_in(rng, 0))))
    return {"loss": float(metrics["loss"]), "per_device_mean": sum(per_device) / 2,
            "same_key_mean": sum(same_key) / 2}


if __name__ == "__main__":
    out = {"gpt": deterministic("configs/gpt_shakespeare_char.py:smoke", []),
           "gpt_micro": deterministic("configs/gpt_shakespeare_char.py:smoke", ["train.micro_batches=2"]),
           "dit": random_loss("configs/dit_small.py:smoke", [])}
    print("RESULT " + json.dumps(out), flush=True)
