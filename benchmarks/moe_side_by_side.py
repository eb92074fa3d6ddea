"""The light MoE against a dense GPT with the same active parameters, same data and steps.

    python benchmarks/moe_side_by_side.py [--workdir runs/moe_bench] [--steps N]

Trains configs/moe_gpt.py:cpu (4 layers, 128 wide, 8 GELU experts 256 wide, top-2) and
configs/moe_gpt.py:dense_cpu (the same model with one 512-wide MLP per layer: the same
active FFN width per token) on the embedded byte corpus (a run already finished in its
workdir is reused, an unfinished one resumes). Reports both val-loss curves, the final
val losses and the MoE's expert-load table (fraction of each layer's top-2 assignments per
expert at the last logged train step). Writes benchmarks/results/moe_side_by_side.{md,json,png}.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import REPO_ROOT, RESULTS_DIR, machine, markdown_table, write_results  # noqa: E402

RUNS = {"moe": "cpu", "dense": "dense_cpu"}


def train_or_reuse(variant: str, workdir: str, steps: int) -> list[dict]:
    from jaxmodels.config import load_config
    from jaxmodels.train.loop import train
    from jaxmodels.train.metrics import read_metrics

    overrides = ["train.progress=false"] + ([f"train.steps={steps}"] if steps else [])
    cfg = load_config(os.path.join(REPO_ROOT, "configs", "moe_gpt.py") + f":{variant}", overrides)
    train(cfg, workdir)
    return read_metrics(os.path.join(workdir, "metrics.jsonl"))


def plot(curves: dict, path: str) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot (pip install matplotlib)", file=sys.stderr)
        return False
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, (train_pts, val_pts) in curves.items():
        line, = ax.plot(*zip(*train_pts), alpha=0.35, lw=1)
        ax.plot(*zip(*val_pts), "o-", color=line.get_color(), label=f"{name} (val)")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/byte); faint: train")
    ax.set_title("moe_gpt.py:cpu vs dense twin, same active params")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="runs/moe_bench")
    parser.add_argument("--steps", type=int, default=0, help="0: the config's steps")
    args = parser.parse_args(argv)
    info = machine()
    metrics = {name: train_or_reuse(variant, os.path.join(args.workdir, variant), args.steps)
               for name, variant in RUNS.items()}
    curves, final = {}, {}
    for name, rows in metrics.items():
        train_pts = [(r["step"], r.get("ce", r["loss"])) for r in rows if "split" not in r and "loss" in r]
        val_pts = [(r["step"], r["val_loss"]) for r in rows if r.get("split") == "val"]
        curves[name] = (train_pts, val_pts)
        final[name] = val_pts[-1]
    last_train = [r for r in metrics["moe"] if "split" not in r and "moe_aux" in r][-1]
    layers = sorted({int(k.split("/l")[1].split("_")[0]) for k in last_train if k.startswith("moe_load/")})
    experts = sorted({int(k.split("_e")[1]) for k in last_train if k.startswith("moe_load/")})
    load = [[last_train[f"moe_load/l{l}_e{e}"] for e in experts] for l in layers]
    rows = [[f"layer {l}"] + [f"{100 * v:.1f}%" for v in load[i]] + [f"{100 * min(load[i]):.1f}%"]
            for i, l in enumerate(layers)]
    md = [f"Measured {info['date_utc']} on {info['cpu']} ({info['cores']} cores, load average "
          f"{info['load_avg_1m']}), jax {info['jax']}.", "",
          markdown_table(["run", "final step", "val loss (nats/byte)"],
                         [[name, final[name][0], f"{final[name][1]:.4f}"] for name in final]), "",
          f"Expert load of the MoE at step {last_train['step']} (share of the top-2 assignments; "
          f"uniform = {100 / len(experts):.1f}%):", "",
          markdown_table(["", *[f"e{e}" for e in experts], "min"], rows), "",
          f"moe_aux (sum over layers, 1.0 per layer = balanced) {last_train['moe_aux']:.3f}, "
          f"router entropy {last_train['moe_entropy']:.3f} (uniform {__import__('math').log(len(experts)):.3f})"]
    data = {"machine": info, "final_val": final, "curves": {k: {"train": v[0], "val": v[1]} for k, v in curves.items()},
            "load": load, "load_step": last_train["step"], "moe_aux": last_train["moe_aux"]}
    md_path, _ = write_results("moe_side_by_side", "\n".join(md), data)
    plot(curves, os.path.join(RESULTS_DIR, "moe_side_by_side.png"))
    print(open(md_path).read())
    return 0


if __name__ == "__main__":
    sys.exit(main())
