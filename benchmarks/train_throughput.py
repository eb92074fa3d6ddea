"""Training throughput on this CPU: recurrent LMs vs a GPT of the same size, and DiT-S/2.

    python -m benchmarks.train_throughput                     # all rows
    python -m benchmarks.train_throughput --steps 2 --warmup 1 --dit-batch 4   # quick check

Every row runs the real jitted train step (`jaxmodels.train.bench.benchmark`: the task,
optimizer, `make_train_step` + `jit_train_step` the trainer uses) on a synthetic batch and
reports the median of --steps timed steps after --warmup untimed ones.
LM rows: each recurrent family's `:smoke` config (mamba, rwkv4, rwkv7, retnet) beside
`gpt2_124m.py:smoke` (same width 32, 2 layers, byte vocab, 8 x 32 tokens), with the
recurrence mode each one ran (its config's scan/wkv/retention mode, "auto" resolved).
DiT row: DiT-S/2 on 32x32x4 latents, batch 32 (4 micro-batches of 8), f32, remat
dots_with_no_batch_dims_saveable, with EMA (configs/dit_b2.py with overrides), images/s and model FLOP/s beside the measured f32 matmul peak
(`jaxmodels.train.flops.peak_flops`). Writes benchmarks/results/train_throughput.{md,json}.
"""
from __future__ import annotations

import argparse
import os
import sys

if __package__ in (None, ""):  # `python benchmarks/train_throughput.py`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np

from benchmarks.common import REPO_ROOT, load_average, machine, markdown_table, write_results

LM_ROWS = [
    ("GPT (gpt2_124m:smoke)", "configs/gpt2_124m.py:smoke", []),
    ("Mamba (mamba_130m:smoke)", "configs/mamba_130m.py:smoke", []),
    ("RWKV-4 (rwkv4_169m:smoke)", "configs/rwkv4_169m.py:smoke", []),
    ("RWKV-7 (rwkv7_l12_d768:smoke)", "configs/rwkv7_l12_d768.py:smoke", []),
    ("RetNet (retnet_base:smoke)", "configs/retnet_base.py:smoke", []),
]
# Batch 32 as 4 micro-batches of 8 with dense-output remat: the fastest CPU setting measured
# (A/B, same session): 4.44 s/step, against 4.59 (2 micro-batches), 5.00 (4, no remat),
# 5.05 (1, remat) and 6.90 s (1 micro-batch, no remat). Smaller working sets stay in cache.
DIT_ROW = ("DiT-S/2, 32x32x4, f32, remat dots_with_no_batch_dims, 4 micro-batches", "configs/dit_b2.py",
           ["model.size=dit-s/2", "model.dtype=float32", "model.remat=dots_with_no_batch_dims_saveable",
            "train.micro_batches=4"])


def load(spec: str, overrides: list[str]):
    from jaxmodels.config import load_config
    path, _, variant = spec.partition(":")
    return load_config(os.path.join(REPO_ROOT, path) + (f":{variant}" if variant else ""), overrides)


def recurrence_mode(model_cfg) -> str:
    """The sequence-mixing form a config runs: attention, or its scan/wkv/retention mode."""
    from jaxmodels import scan

    m = model_cfg.to_dict()
    parts = []
    for key in ("retention_mode", "wkv_mode", "scan_mode"):
        if key in m:
            value = scan.resolve_mode(m[key]) if key == "scan_mode" else m[key]
            chunk = m.get("chunk_size", m.get("scan_chunk"))
            suffix = f" (chunk {chunk})" if "chunk" in str(value) and chunk else ""
            parts.append(f"{key}={value}{suffix}" + (" [auto]" if m[key] == "auto" else ""))
    return ", ".join(parts) or "attention"


def param_count(cfg) -> int:
    import jax
    from jaxmodels.tasks import build_task
    from jaxmodels.train.build import make_setup
    setup = make_setup(build_task(cfg), cfg)
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(setup.abstract_params)))


def run_row(label: str, spec: str, overrides: list[str], steps: int, warmup: int) -> dict:
    from jaxmodels.train.bench import benchmark
    cfg = load(spec, overrides)
    load_before = load_average()
    result = benchmark(cfg, steps=steps, warmup=warmup)
    out = {"label": label, "spec": spec, "overrides": overrides, "params": param_count(cfg),
           "mode": recurrence_mode(cfg.model), "batch_size": int(cfg.train.batch_size),
           "seq_len": int(cfg.data.get("seq_len", 0) or 0), "steps": steps, "warmup": warmup,
           "load_avg_1m": round((load_before + load_average()) / 2, 2), **result}
    unit = "tokens_per_s" if "tokens_per_s" in result else "images_per_s"
    print(f"{label}: {out['median_step_s'] * 1e3:.1f} ms/step, {result[unit]:,.1f} {unit}, "
          f"load {out['load_avg_1m']}", flush=True)
    return out


def render(lm: list[dict], dit: dict | None, info: dict, pytorch_s: float) -> str:
    header = ["model", "params", "sequence mixing", "batch x seq", "median step ms", "tokens/s",
              "model GFLOP/s", "load avg"]
    rows = [[r["label"], f"{r['params']:,}", r["mode"], f"{r['batch_size']} x {r['seq_len']}",
             f"{r['median_step_s'] * 1e3:.1f}", f"{r['tokens_per_s']:,.0f}",
             f"{r['model_flops_per_s'] / 1e9:.2f}", r["load_avg_1m"]] for r in lm]
    text = (f"Measured {info['date_utc']} on {info['cpu']} ({info['cores']} cores), jax {info['jax']}.\n\n"
            "### Recurrent LMs vs GPT (`:smoke` sizes)\n\n" + markdown_table(header, rows))
    if dit:
        mfu = dit.get("mfu")
        header = ["model", "params", "batch", "median step s", "images/s", "model GFLOP/s",
                  "f32 matmul peak GFLOP/s", "MFU", "PyTorch DiT (docs/peers.md) s/step", "load avg"]
        row = [dit["label"], f"{dit['params'] / 1e6:.1f}M", dit["batch_size"], f"{dit['median_step_s']:.2f}",
               f"{dit['images_per_s']:.2f}", f"{dit['model_flops_per_s'] / 1e9:.1f}",
               f"{dit['peak_flops_per_s'] / 1e9:.0f}" if dit.get("peak_flops_per_s") else "—",
               f"{100 * mfu:.1f}%" if mfu is not None else "—", f"~{pytorch_s}", dit["load_avg_1m"]]
        text += "\n\n### DiT-S/2 training\n\n" + markdown_table(header, [row])
    return text


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20, help="timed LM steps (median)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--dit-steps", type=int, default=5)
    parser.add_argument("--dit-warmup", type=int, default=2)
    parser.add_argument("--dit-batch", type=int, default=32)
    parser.add_argument("--skip-dit", action="store_true")
    parser.add_argument("--skip-lm", action="store_true")
    parser.add_argument("--name", default="train_throughput", help="results file stem")
    args = parser.parse_args(argv)
    lm = []
    if not args.skip_lm:
        for label, spec, overrides in LM_ROWS:
            try:
                lm.append(run_row(label, spec, overrides, args.steps, args.warmup))
            except Exception as e:  # a family still being written must not sink the others
                print(f"skipping {label}: {type(e).__name__}: {e}", file=sys.stderr)
    dit = None
    if not args.skip_dit:
        label, spec, overrides = DIT_ROW
        dit = run_row(label, spec, overrides + [f"train.batch_size={args.dit_batch}"],
                      args.dit_steps, args.dit_warmup)
    info = machine()
    md = render(lm, dit, info, pytorch_s=5.3)
    print(md)
    write_results(args.name, md, {"machine": info, "lm": lm, "dit": dit})
    return 0


if __name__ == "__main__":
    sys.exit(main())
