"""Run as a program with 8 forced host devices (the flag must be set before jax is imported,
so the tests start this in a subprocess):

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m tests.sharding.mesh_step SPEC [OVERRIDE ...]

One train step of SPEC on one device, then on each mesh of MESHES starting from the same
state and batch. Prints one JSON line: the largest param / optimizer-state difference per
mesh, and the per-device shard shapes of every param and of the optimizer state.
"""
import json
import os
import sys

assert "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", ""), "set XLA_FLAGS first"

import jax  # noqa: E402
import numpy as np  # noqa: E402

from jaxmodels.config import apply_overrides, load_config  # noqa: E402
from jaxmodels.tasks import build_task  # noqa: E402
from jaxmodels.train.build import fresh_state, make_setup  # noqa: E402
from jaxmodels.train.sharding import make_plan, path_str  # noqa: E402
from jaxmodels.train.step import jit_train_step, make_train_step  # noqa: E402

MESHES = [(8, 1, 1), (2, 4, 1), (2, 2, 2)]


def _max_diff(a, b) -> float:
    return max(float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _shard_shapes(tree) -> dict:
    """{"path": [shape of device 0's shard]} read from the live arrays (not from the spec)."""
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {path_str(p): list(x.addressable_shards[0].data.shape) for p, x in flat}


def one_device_setup(spec: str, overrides: list[str]):
    """(cfg on one device, task, setup, the first train batch as host arrays)."""
    cfg = load_config(spec, overrides + ["mesh.data=1", "mesh.fsdp=1", "mesh.tensor=1"])
    task = build_task(cfg)
    setup = make_setup(task, cfg)
    batch_size = int(cfg.train.batch_size)
    abstract = task.abstract_batch(batch_size)
    batch = {k: np.asarray(v, abstract[k].dtype)
             for k, v in next(iter(task.dataset("train", batch_size, int(cfg.train.seed)))).items()}
    return cfg, task, setup, batch


def main(spec: str, overrides: list[str]) -> dict:
    cfg, task, setup, batch = one_device_setup(spec, overrides)
    step = make_train_step(task, setup.optimizer, setup.schedule, cfg.train, setup.trainable)
    state0 = jax.device_get(fresh_state(task, cfg, setup))
    ref, ref_metrics = jit_train_step(step)(jax.device_put(state0), batch)
    out = {"loss": float(ref_metrics["loss"]), "meshes": {}}
    for shape in MESHES:
        apply_overrides(cfg, [f"mesh.data={shape[0]}", f"mesh.fsdp={shape[1]}", f"mesh.tensor={shape[2]}"])
        plan = make_plan(cfg, setup.abstract_state)
        jitted = jit_train_step(step, plan.mesh, plan.state)
        state = jax.device_put(state0, plan.state)
        placed = {k: jax.device_put(v, plan.batch) for k, v in batch.items()}
        new, metrics = jitted(state, placed)
        out["meshes"]["x".join(map(str, shape))] = {
            "params_diff": _max_diff(new.params, ref.params),
            "opt_diff": _max_diff(new.opt_state, ref.opt_state),
            "loss_diff": abs(float(metrics["loss"]) - out["loss"]),
            "params": _shard_shapes(new.params),
            "opt_state": _shard_shapes(new.opt_state),
        }
    return out


if __name__ == "__main__":
    print("RESULT " + json.dumps(main(sys.argv[1], sys.argv[2:])), flush=True)
