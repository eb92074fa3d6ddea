"""8-bit AdamW vs f32 AdamW (and Adafactor, and 8-bit AdamW over bf16-stored params), side by
side on one CPU recipe.

    PYTHONPATH=. python benchmarks/optim_state_side_by_side.py              # 200 steps each
    PYTHONPATH=. python benchmarks/optim_state_side_by_side.py --steps 100  # quicker

Trains configs/gpt_shakespeare_char.py:embedded (a 0.8M-param char GPT on the embedded byte
corpus) once per optim.kind ("adamw8bit+bf16": with optim.param_dtype=bfloat16, stochastic
rounding) in this one process, identical in everything else (init seed,
data order, schedule, clipping, weight decay). Reports the final train loss, the val loss
on the same held-out batches, and each one's ratio to f32 AdamW. Writes
benchmarks/results/optim_state_side_by_side.{md,json}.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import REPO_ROOT, machine, markdown_table, write_results  # noqa: E402

CONFIG = os.path.join(REPO_ROOT, "configs", "gpt_shakespeare_char.py") + ":embedded"
KINDS = ("adamw", "adamw8bit", "adafactor", "adamw8bit+bf16")


def run_one(kind: str, workdir: str, steps: int) -> dict:
    from jaxmodels.config import load_config
    from jaxmodels.train.loop import train
    from jaxmodels.train.metrics import read_metrics

    optim_kind, _, storage = kind.partition("+")
    extra = ["optim.param_dtype=bfloat16"] if storage == "bf16" else []
    cfg = load_config(CONFIG, extra + [f"optim.kind={optim_kind}", "train.progress=False", f"train.steps={steps}",
                               f"train.eval_every={steps}", "train.checkpoint_every=0",
                               "train.checkpoint_minutes=0"])
    shutil.rmtree(workdir, ignore_errors=True)
    start = time.time()
    train(cfg, workdir)
    rows = read_metrics(os.path.join(workdir, "metrics.jsonl"))
    train_loss = [r["loss"] for r in rows if "loss" in r]
    val = [r["val_loss"] for r in rows if "val_loss" in r]
    return {"kind": kind, "final_train_loss": train_loss[-1], "val_loss": val[-1],
            "seconds": round(time.time() - start, 1)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--workdir", default="/tmp/optim_state_side_by_side")
    parser.add_argument("--kinds", default=",".join(KINDS))
    args = parser.parse_args(argv)
    results = [run_one(k, os.path.join(args.workdir, k), args.steps) for k in args.kinds.split(",")]
    ref = next(r for r in results if r["kind"] == "adamw")
    rows = [(r["kind"], f"{r['final_train_loss']:.4f}", f"{r['val_loss']:.4f}",
             f"{r['val_loss'] / ref['val_loss']:.4f}", r["seconds"]) for r in results]
    info = machine()
    md = (f"{args.steps} steps of {CONFIG.split('/')[-1]}, one process, {info['cpu']}, {info['date_utc']}, "
          f"load {info['load_avg_1m']} (shared machine)\n\n"
          + markdown_table(["optim.kind", "final train loss", "val loss", "val / f32 AdamW", "wall s"], rows))
    print(md)
    write_results("optim_state_side_by_side", md, {"machine": info, "steps": args.steps, "runs": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
