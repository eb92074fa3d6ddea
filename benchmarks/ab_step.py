"""A/B of one train step in one process: config overrides and XLA compile options, alternating.

Each variant is compiled once (synthetic batch, the config's own model and optimizer), run
twice to warm up, then the variants take turns for ROUNDS steps, so background load hits
them alike. Prints each variant's median step time and its median ratio to the first.

    python -m benchmarks.ab_step --config configs/gpt_shakespeare_char.py --rounds 5 \\
        --set data.path=tinyshakespeare.txt \\
        --variant "" --variant "|xla_cpu_experimental_ynn_fusion_type=" --variant "model.scan_layers=False"

A variant is "OVERRIDE OVERRIDE ...|OPTION=VALUE;OPTION=VALUE" (either side may be empty);
--set adds overrides to every variant. The pseudo-override `no_attention` compiles that variant
with the multi-head attention layers' attention replaced by passing v through (the q/k/v and
output projections stay): the step's cost without attention, e.g. for DiT-S/2

    python -m benchmarks.ab_step --config configs/dit_b2.py --rounds 3 --set model.size=dit-s/2 \
        --set model.dtype=float32 --set train.batch_size=32 \
        --set model.remat=dots_with_no_batch_dims_saveable --set train.micro_batches=4 \
        --variant "kernels.attention=xla" --variant "" --variant "no_attention"
 OPTION is an XLA compile option
(`lowered.compile(compiler_options=...)`), e.g. xla_cpu_enable_concurrency_optimized_scheduler.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time


def _options(text: str) -> dict:
    out = {}
    for item in filter(None, text.split(";")):
        key, _, value = item.partition("=")
        out[key] = {"true": True, "false": False}.get(value, value)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--set", action="append", default=[], help="an override for every variant")
    p.add_argument("--variant", action="append", required=True, help="OVERRIDES|COMPILE_OPTIONS")
    args = p.parse_args()

    import jax

    import jaxmodels.layers.mha as mha
    from jaxmodels.config import load_config
    from jaxmodels.tasks import build_task
    from jaxmodels.train.bench import synthetic_batch
    from jaxmodels.train.build import fresh_state, make_setup
    from jaxmodels.train.step import jit_train_step, make_mesh, make_train_step, shardings

    runs = []
    real_attention = mha.attention
    for variant in args.variant:
        overrides, _, options = variant.partition("|")
        overrides = overrides.split()
        no_attention = "no_attention" in overrides
        overrides = [o for o in overrides if o != "no_attention"]
        mha.attention = (lambda q, k, v, **kw: v) if no_attention else real_attention
        cfg = load_config(args.config, args.set + overrides)
        task = build_task(cfg)
        setup = make_setup(task, cfg)
        mesh = make_mesh(cfg.mesh)
        rep, split = shardings(mesh)
        step = jit_train_step(make_train_step(task, setup.optimizer, setup.schedule, cfg.train, setup.trainable, mesh), mesh)
        state = fresh_state(task, cfg, setup, rep)
        batch = synthetic_batch(task.abstract_batch(int(cfg.train.batch_size)), split)
        compiled = step.lower(state, batch).compile(compiler_options=_options(options) or None)
        for _ in range(2):
            state, _ = compiled(state, batch)
        jax.block_until_ready(state)
        mha.attention = real_attention
        runs.append({"variant": variant or "(as configured)", "step": compiled, "state": state,
                     "batch": batch, "times": []})
    for _ in range(args.rounds):
        for run in runs:
            t = time.perf_counter()
            run["state"], _ = run["step"](run["state"], run["batch"])
            jax.block_until_ready(run["state"])
            run["times"].append(time.perf_counter() - t)
    first = runs[0]["times"]
    for run in runs:
        ratio = statistics.median(a / b for a, b in zip(run["times"], first))
        print(f"{run['variant']}: median {1000 * statistics.median(run['times']):.1f} ms/step, "
              f"ratio to the first {ratio:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
