"""Run as a program with forced host devices (set before jax is imported):

    XLA_FLAGS=--xla_force_host_platform_device_count=8 \
        python -m tests.sharding.restore_on_mesh WORKDIR DATA FSDP TENSOR OUT.npz

Restores the newest checkpoint of WORKDIR onto the mesh (DATA, FSDP, TENSOR) (whatever mesh
saved it), saves the params as host arrays to OUT.npz and prints one JSON line with the
per-device shard shape of every param.
"""
import json
import sys

import jax
import ml_collections
import numpy as np

from jaxmodels.config import apply_overrides
from jaxmodels.tasks import build_task
from jaxmodels.train.build import make_setup
from jaxmodels.train.checkpoint import Checkpointer, abstract_with_sharding, newest_meta
from jaxmodels.train.sharding import make_plan, path_str


def main(workdir: str, data: int, fsdp: int, tensor: int, out: str) -> dict:
    _, meta = newest_meta(workdir)
    cfg = ml_collections.ConfigDict(meta["config"])
    apply_overrides(cfg, [f"mesh.data={data}", f"mesh.fsdp={fsdp}", f"mesh.tensor={tensor}"])
    task = build_task(cfg)
    setup = make_setup(task, cfg)
    plan = make_plan(cfg, setup.abstract_state)
    ckpt = Checkpointer(workdir, async_save=False, trainable=setup.trainable)
    try:
        step, state, _ = ckpt.restore(abstract_with_sharding(setup.abstract_state, plan.state), set_aside=False)
    finally:
        ckpt.close()
    flat = jax.tree_util.tree_flatten_with_path(state.params)[0]
    np.savez(out, **{path_str(p): np.asarray(x) for p, x in flat})
    return {"step": step, "devices": len(flat[0][1].sharding.device_set),
            "shards": {path_str(p): list(x.addressable_shards[0].data.shape) for p, x in flat}}


if __name__ == "__main__":
    w, d, f, t, o = sys.argv[1:6]
    print("RESULT " + json.dumps(main(w, int(d), int(f), int(t), o)), flush=True)
