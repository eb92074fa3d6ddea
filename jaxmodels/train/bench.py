"""Times the train step of a config: median step time, units/s, model FLOP/s and MFU."""
from __future__ import annotations

import statistics
import time

import jax
import jax.numpy as jnp
import ml_collections

from jaxmodels.tasks import build_task
from jaxmodels.train import flops as flops_lib
from jaxmodels.train.build import fresh_state, make_setup
from jaxmodels.train.sharding import make_plan
from jaxmodels.train.step import jit_train_step, make_train_step


def synthetic_batch(abstract: dict, sharding=None) -> dict:
    """Ones for float entries (masks count every target), zeros for ints (token 0)."""
    def one(s):
        x = jnp.ones(s.shape, s.dtype) if jnp.issubdtype(s.dtype, jnp.floating) else jnp.zeros(s.shape, s.dtype)
        return jax.device_put(x, sharding) if sharding is not None else x
    return {k: one(v) for k, v in abstract.items()}


def prepare(cfg: ml_collections.ConfigDict, real_data: bool = False):
    """The compiled-on-first-call train step of a config as launch.train builds it (on a CPU
    whose backend has not started yet, one device per core), a fresh state and a batch source.
    Returns (task, mesh, step_fn, state, next_batch)."""
    from jaxmodels.train.cpu_devices import configure
    configure(cfg)
    task = build_task(cfg)
    setup = make_setup(task, cfg)
    plan = make_plan(cfg, setup.abstract_state)
    mesh, split = plan.mesh, plan.batch
    step_fn = jit_train_step(make_train_step(task, setup.optimizer, setup.schedule, cfg.train,
                                             setup.trainable, mesh), mesh, plan.state)
    state = fresh_state(task, cfg, setup, plan.state)
    batch_size = int(cfg.train.batch_size)
    abstract = task.abstract_batch(batch_size)
    data = iter(task.dataset("train", batch_size, int(cfg.train.seed))) if real_data else None
    fixed = None if real_data else synthetic_batch(abstract, split)

    def next_batch():
        if fixed is not None:
            return fixed
        b = next(data)
        return {k: jnp.asarray(v, abstract[k].dtype) for k, v in b.items()}
    return task, mesh, step_fn, state, next_batch


def benchmark(cfg: ml_collections.ConfigDict, steps: int = 20, warmup: int = 3, real_data: bool = False) -> dict:
    """Runs warmup + steps train steps; returns timings (each step timed to completion).
    As launch.train: on a CPU whose backend has not started yet, one device per core."""
    task, mesh, step_fn, state, next_batch = prepare(cfg, real_data)
    batch_size = int(cfg.train.batch_size)
    t0 = time.perf_counter()
    state, metrics = step_fn(state, next_batch())
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - t0
    for _ in range(max(0, warmup - 1)):
        state, metrics = step_fn(state, next_batch())
    jax.block_until_ready(state)
    times = []
    for _ in range(steps):
        batch = next_batch()
        t0 = time.perf_counter()
        state, metrics = step_fn(state, batch)
        jax.block_until_ready((state, metrics))
        times.append(time.perf_counter() - t0)
    median = statistics.median(times)
    examples_per_s = batch_size / median
    fpe = float(task.flops_per_example())
    dtype = str(cfg.model.get("dtype", "float32"))
    peak = flops_lib.peak_flops(dtype=dtype)
    n_dev = 1 if mesh is None else mesh.size
    device = jax.devices()[0]
    return {
        "device": f"{device.platform}: {device.device_kind} x{n_dev}",
        "dtype": dtype,
        "compile_s": compile_s,
        "median_step_s": median,
        "min_step_s": min(times),
        f"{task.unit}_per_s": examples_per_s * float(task.units_per_example()),
        "model_flops_per_s": fpe * examples_per_s,
        "peak_flops_per_s": peak,
        "mfu": flops_lib.mfu(fpe, examples_per_s, peak, flops_lib.peak_units(mesh)),
        "loss": float(metrics["loss"]),
    }
