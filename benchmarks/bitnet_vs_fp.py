"""BitNet b1.58 vs the same architecture in full precision, side by side on CPU.

    PYTHONPATH=. python benchmarks/bitnet_vs_fp.py            # both runs of configs/bitnet_b158.py:cpu
    PYTHONPATH=. python benchmarks/bitnet_vs_fp.py --steps 100 --workdir /tmp/bvf   # quicker

Trains `configs/bitnet_b158.py:cpu` twice in this one process, identical in everything
(architecture, init seed, data order, steps, two-stage optimizer) except model.quant:
"b1.58" (ternary weights, 8-bit activations, STE) and "none" (f32 matmuls). Each run
evaluates on the same held-out batches. Writes benchmarks/results/bitnet_vs_fp.{md,json}
and docs/bitnet_vs_fp.png (train and validation loss curves of both).
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import REPO_ROOT, machine, markdown_table, write_results  # noqa: E402

CONFIG = os.path.join(REPO_ROOT, "configs", "bitnet_b158.py") + ":cpu"
PNG = os.path.join(REPO_ROOT, "docs", "bitnet_vs_fp.png")
RUNS = (("b1.58", "b1.58 (ternary W, 8-bit A)"), ("none", "full precision (f32)"))


def run_one(quant: str, workdir: str, steps: int) -> dict:
    from jaxmodels.config import load_config
    from jaxmodels.train.loop import train
    from jaxmodels.train.metrics import read_metrics

    overrides = [f"model.quant={quant}", "train.progress=False"]
    if steps:
        overrides.append(f"train.steps={steps}")
    cfg = load_config(CONFIG, overrides)
    shutil.rmtree(workdir, ignore_errors=True)
    start = time.time()
    train(cfg, workdir)
    seconds = time.time() - start
    rows = read_metrics(os.path.join(workdir, "metrics.jsonl"))
    train_curve = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    val_curve = [(r["step"], r["val_loss"]) for r in rows if "val_loss" in r]
    return {"quant": quant, "steps": int(cfg.train.steps), "seconds": round(seconds, 1),
            "train": train_curve, "val": val_curve, "final_val_loss": val_curve[-1][1]}


def plot(results: list[dict], path: str, note: str) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot (pip install matplotlib)", file=sys.stderr)
        return False
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for r, colour in zip(results, ("tab:red", "tab:blue")):
        label = dict(RUNS)[r["quant"]]
        ax.plot(*zip(*r["train"]), color=colour, alpha=0.35, label=f"{label}: train")
        ax.plot(*zip(*r["val"]), "o-", color=colour, label=f"{label}: val ({r['final_val_loss']:.3f})")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats / byte)")
    ax.set_ylim(top=min(4.0, ax.get_ylim()[1]))
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title("configs/bitnet_b158.py:cpu, b1.58 vs full precision", fontsize=10)
    fig.text(0.01, 0.01, note, fontsize=7)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fig.savefig(path, dpi=110)
    return True


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=0, help="override train.steps (0: the config's)")
    parser.add_argument("--workdir", default="runs/bitnet_vs_fp")
    args = parser.parse_args(argv)
    env = machine()
    results = [run_one(quant, os.path.join(args.workdir, quant.replace(".", "")), args.steps)
               for quant, _ in RUNS]
    env["load_avg_1m_after"] = machine()["load_avg_1m"]
    rows = [[dict(RUNS)[r["quant"]], r["steps"], f"{r['final_val_loss']:.4f}",
             f"{r['train'][-1][1]:.4f}", f"{r['seconds']:.0f}"] for r in results]
    gap = results[0]["final_val_loss"] - results[1]["final_val_loss"]
    md = (markdown_table(["model", "steps", "final val loss", "last train loss", "wall s"], rows)
          + f"\n\nval-loss gap (b1.58 - full precision): {gap:+.4f} nats/byte\n"
          + f"\n{env['cpu']}, {env['cores']} cores, load avg {env['load_avg_1m']} -> "
            f"{env['load_avg_1m_after']}, {env['date_utc']}\n")
    write_results("bitnet_vs_fp", md, {"machine": env, "config": CONFIG, "results": results, "gap": gap})
    plot(results, PNG, f"{env['cpu']}, {env['date_utc']}")
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
