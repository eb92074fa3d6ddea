"""One train step with and without glibc's huge-page tunable (jaxmodels/hugepages.py), alternating.

    python -m benchmarks.hugepages_ab --pairs 3 --config configs/dit_b2.py --steps 4 \\
        --set model.size=dit-s/2 --set model.dtype=float32 --set train.batch_size=32 \\
        --set model.remat=dots_with_no_batch_dims_saveable --set train.micro_batches=4

Each side is a fresh process (a glibc tunable is read at process start): compile, two warm-up
steps, then STEPS timed steps; per process the median step time, the minor page faults and the
kernel (system) CPU time per step. Sides alternate (off, on, off, on, ...); prints each pair
and the median ratio on / off.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

from benchmarks.common import REPO_ROOT
from jaxmodels import hugepages

CODE = """
import json, resource, statistics, sys, time
import jax
from jaxmodels.config import load_config
from jaxmodels.tasks import build_task
from jaxmodels.train.bench import synthetic_batch
from jaxmodels.train.build import fresh_state, make_setup
from jaxmodels.train.step import jit_train_step, make_mesh, make_train_step, shardings
cfg = load_config({config!r}, {overrides!r})
task = build_task(cfg); setup = make_setup(task, cfg); mesh = make_mesh(cfg.mesh); rep, split = shardings(mesh)
step = jit_train_step(make_train_step(task, setup.optimizer, setup.schedule, cfg.train, setup.trainable, mesh), mesh)
state = fresh_state(task, cfg, setup, rep); batch = synthetic_batch(task.abstract_batch(int(cfg.train.batch_size)), split)
c = step.lower(state, batch).compile()
for _ in range(2): state, _ = c(state, batch); jax.block_until_ready(state)
times = []; r0 = resource.getrusage(resource.RUSAGE_SELF)
for _ in range({steps}):
    t = time.perf_counter(); state, _ = c(state, batch); jax.block_until_ready(state); times.append(time.perf_counter() - t)
r1 = resource.getrusage(resource.RUSAGE_SELF)
print("RESULT", json.dumps({{"step_s": statistics.median(times), "faults": (r1.ru_minflt - r0.ru_minflt) / {steps},
                            "sys_s": (r1.ru_stime - r0.ru_stime) / {steps}}}))
"""


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True)
    p.add_argument("--set", action="append", default=[], help="a config override")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--pairs", type=int, default=3)
    args = p.parse_args()
    base = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "JAXMODELS_HUGEPAGES")}
    env_on = hugepages.with_tunable(base)
    if env_on.get("GLIBC_TUNABLES") is None:
        print("the tunable is not wanted on this host (jaxmodels/hugepages.py): nothing to compare")
        return 1
    code = CODE.format(config=args.config, overrides=args.set, steps=args.steps)
    ratios = []
    for pair in range(args.pairs):
        got = {}
        for side, env in (("off", base), ("on", env_on)):
            out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True)
            if out.returncode != 0:
                raise RuntimeError(out.stderr[-3000:])
            got[side] = json.loads(out.stdout.split("RESULT", 1)[1].strip().splitlines()[0])
        ratios.append(got["on"]["step_s"] / got["off"]["step_s"])
        print(f"pair {pair}: " + "; ".join(
            f"{side} {r['step_s']:.3f} s/step, {r['faults']:.0f} faults/step, {r['sys_s'] * 1e3:.0f} ms sys/step"
            for side, r in got.items()) + f"; on/off {ratios[-1]:.3f}", flush=True)
    print(f"median ratio on / off: {statistics.median(ratios):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
