"""GPT training on this CPU, side by side with nanoGPT (PyTorch), same model, data and optimizer.

nanoGPT is not part of this repository: fetch it somewhere outside the tree, prepare its
shakespeare_char data from the same tinyshakespeare.txt, and give a Python with torch:

    python benchmarks/nanogpt_side_by_side.py --nanogpt /tmp/nanogpt --torch-python /tmp/torchvenv/bin/python \
        --data data/tinyshakespeare.txt [--repeats 2] [--skip-full]

Two comparisons, the runs alternating (nanoGPT, ours, nanoGPT, ours) so that background
load hits both alike; medians and ratios are reported:
  (a) nanoGPT's CPU "baby" settings: 4 layers, 4 heads, 128 wide, block 64, batch 12, 200
      iterations, dropout 0, lr 1e-3, warmup 100, cosine to 1e-4 (our configs/
      gpt_shakespeare_char.py:baby). Reports ms/iteration (median over iterations, compile
      and eval excluded on both sides) and the val loss at iteration 200.
  (b) the full shakespeare_char model (6/6/384, block 256, batch 64): s/iteration over a
      few iterations (ours through jaxmodels.train.bench with the real data pipeline).
Both run f32 on 2 threads. --bf16 also times ours with bf16 matmul operands
(kernels.matmul=bf16); --peer-bf16 also times nanoGPT with PyTorch's switch for the same
(torch.backends.mkldnn.matmul.fp32_precision='bf16'), the like-for-like partner.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # run as a script from anywhere: the repo's jaxmodels
from jaxmodels import hugepages  # noqa: E402
THREADS_ENV = {"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"}

BABY_NANOGPT = ["--device=cpu", "--compile=False", "--dtype=float32", "--eval_iters=20",
                "--log_interval=1", "--block_size=64", "--batch_size=12", "--n_layer=4",
                "--n_head=4", "--n_embd=128", "--max_iters=200", "--lr_decay_iters=200",
                "--dropout=0.0", "--eval_interval=200", "--always_save_checkpoint=False"]


def run(cmd, cwd, env_extra=None) -> str:
    env = dict(os.environ, **THREADS_ENV, **(env_extra or {}))
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return out.stdout + out.stderr


# PyTorch's own switch for bf16 matmul operands in f32 models on a CPU (oneDNN; AMX on recent
# Xeons), the CPU counterpart of the TF32 switch nanoGPT turns on for GPUs. nanoGPT itself
# leaves it off on a CPU, so it is set here before train.py runs, without editing nanoGPT.
PEER_BF16 = ("import runpy, sys, torch; torch.backends.mkldnn.matmul.fp32_precision = 'bf16'; "
             "torch.backends.mkldnn.conv.fp32_precision = 'bf16'; "
             "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')")


def nanogpt_run(args, extra, bf16: bool = False) -> dict:
    launcher = [args.torch_python, "-c", PEER_BF16] if bf16 else [args.torch_python]
    text = run([*launcher, "train.py", "config/train_shakespeare_char.py", *extra], cwd=args.nanogpt)
    iters = [(int(i), float(ms)) for i, ms in re.findall(r"iter (\d+): loss [\d.]+, time ([\d.]+)ms", text)]
    vals = {int(s): float(v) for s, v in re.findall(r"step (\d+): train loss [\d.]+, val loss ([\d.]+)", text)}
    # Iteration 0 carries start-up (and the first eval); drop it and any eval iterations.
    ms = [t for i, t in iters if i > 0 and i not in vals]
    return {"ms_per_iter": statistics.median(ms), "val_loss": vals.get(max(vals)) if vals else None,
            "val_step": max(vals) if vals else None}


def ours_baby(args, overrides=()) -> dict:
    with tempfile.TemporaryDirectory() as workdir:
        run([sys.executable, "-m", "launch.train", "--config", "configs/gpt_shakespeare_char.py:baby",
             "--workdir", workdir, f"--config.data.path={os.path.abspath(args.data)}",
             "--config.train.log_every=10", "--config.train.progress=false",
             *[f"--config.{o}" for o in overrides]], cwd=ROOT)
        rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    rates = [r["steps_per_s"] for r in rows if r.get("steps_per_s")]
    vals = {r["step"]: r["val_loss"] for r in rows if "val_loss" in r}
    mfus = [r["mfu"] for r in rows if r.get("mfu")]  # model FLOP/s over the measured f32 matmul peak
    return {"ms_per_iter": 1000.0 / statistics.median(rates), "val_loss": vals.get(max(vals)),
            "val_step": max(vals), "mfu": statistics.median(mfus) if mfus else None}


def ours_full(args, steps: int, overrides=()) -> dict:
    overrides = [f"data.path={os.path.abspath(args.data)}", *overrides]
    code = (
        "import json, sys; from jaxmodels.config import load_config; "
        "from jaxmodels.train.bench import benchmark; "
        f"cfg = load_config('configs/gpt_shakespeare_char.py', {overrides!r}); "
        f"r = benchmark(cfg, steps={steps}, warmup=2, real_data=True); print('RESULT', json.dumps(r))")
    # As launch.train runs (ours_baby goes through it): glibc's huge-page tunable where it helps.
    tunable = {"GLIBC_TUNABLES": hugepages.with_tunable()["GLIBC_TUNABLES"]} if hugepages.wanted() else {}
    text = run([sys.executable, "-c", code], cwd=ROOT, env_extra=tunable)
    result = json.loads(text.split("RESULT", 1)[1].strip().splitlines()[0])
    return {"s_per_iter": result["median_step_s"], "model_flops_per_s": result["model_flops_per_s"],
            "peak_flops_per_s": result["peak_flops_per_s"]}


def nanogpt_full(args, steps: int, bf16: bool = False) -> dict:
    extra = ["--device=cpu", "--compile=False", "--dtype=float32", "--eval_iters=1",
             "--log_interval=1", f"--max_iters={steps + 1}", "--eval_interval=100000",
             "--always_save_checkpoint=False"]
    r = nanogpt_run(args, extra, bf16)
    return {"s_per_iter": r["ms_per_iter"] / 1000.0}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nanogpt", required=True, help="nanoGPT checkout with data/shakespeare_char prepared")
    p.add_argument("--torch-python", required=True, help="a python with torch (CPU) installed")
    p.add_argument("--data", required=True, help="tinyshakespeare.txt (the file nanoGPT prepared from)")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--full-steps", type=int, default=5)
    p.add_argument("--skip-full", action="store_true")
    p.add_argument("--skip-baby", action="store_true")
    p.add_argument("--bf16", action="store_true",
                   help="also time ours with kernels.matmul=bf16 (bf16 matmul operands, f32 accumulation)")
    p.add_argument("--peer-bf16", action="store_true",
                   help="also time nanoGPT with PyTorch's bf16 matmul operands for f32 models "
                        "(torch.backends.mkldnn.matmul.fp32_precision='bf16'): like for like with --bf16")
    p.add_argument("--variant", action="append", default=[], metavar="NAME:OVERRIDE[,OVERRIDE...]",
                   help="also time ours with these config overrides, e.g. unrolled:model.scan_layers=False")
    args = p.parse_args()
    sys.path.insert(0, ROOT)
    from benchmarks.common import machine
    # Our variants: row key -> config overrides ("ours" is the config as written).
    variants = {"ours": []}
    if args.bf16:
        variants["ours_bf16"] = ["kernels.matmul=bf16"]
    for v in args.variant:
        name, _, overrides = v.partition(":")
        variants[f"ours_{name}"] = [o for o in overrides.split(",") if o]
    peers = ["nanogpt"] + (["nanogpt_bf16"] if args.peer_bf16 else [])
    report = {"machine": machine(), "variants": variants,
              "baby": {**{k: [] for k in peers}, **{k: [] for k in variants}},
              "full": {**{k: [] for k in peers}, **{k: [] for k in variants}}}
    for rep in range(args.repeats):
        if not args.skip_baby:
            for peer in peers:
                report["baby"][peer].append(nanogpt_run(args, BABY_NANOGPT, peer.endswith("bf16")))
            for key, overrides in variants.items():
                report["baby"][key].append(ours_baby(args, overrides))
            print(f"[baby {rep}]", {k: v[-1] for k, v in report["baby"].items()}, flush=True)
        if not args.skip_full:
            for peer in peers:
                report["full"][peer].append(nanogpt_full(args, args.full_steps, peer.endswith("bf16")))
            for key, overrides in variants.items():
                report["full"][key].append(ours_full(args, args.full_steps, overrides))
            print(f"[full {rep}]", {k: v[-1] for k, v in report["full"].items()}, flush=True)

    def med(rows, key):
        return statistics.median(r[key] for r in rows)

    table = io.StringIO()

    def out(*args):  # the table goes to stdout and to results/<name>.md
        print(*args)
        print(*args, file=table)

    m = report["machine"]
    out(f"\n{m['cpu']} ({m['cores']} cores; {m['isa']}), jax {m['jax']}, {m['date_utc']}, "
          f"1-min load average {m['load_avg_1m']} at the start")
    out("\n| comparison | nanoGPT | jaxmodels | ratio (ours / nanoGPT) |\n|---|---|---|---|")
    rows = [(key, overrides, "nanogpt") for key, overrides in variants.items()]
    if args.peer_bf16:  # bf16 operands on both sides
        rows += [(key, overrides, "nanogpt_bf16") for key, overrides in variants.items()
                 if "kernels.matmul=bf16" in overrides]
    for key, overrides, peer in rows:
        label = f", ours with {' '.join(overrides)}" if overrides else ""
        if peer != "nanogpt":
            label += ", nanoGPT with mkldnn fp32_precision=bf16"
        if report["baby"][key]:
            n, o = report["baby"][peer], report["baby"][key]
            out(f"| (a) baby{label}, ms/iter (median) | {med(n, 'ms_per_iter'):.1f} | "
                  f"{med(o, 'ms_per_iter'):.1f} | {med(o, 'ms_per_iter') / med(n, 'ms_per_iter'):.2f} |")
            out(f"| (a) baby{label}, val loss at iter 200 | {med(n, 'val_loss'):.3f} | {med(o, 'val_loss'):.3f} | "
                  f"{med(o, 'val_loss') - med(n, 'val_loss'):+.3f} (difference) |")
            if peer == "nanogpt" and all(r.get("mfu") for r in o):
                # Same model, same batch: nanoGPT's fraction is ours scaled by the time ratio.
                ours_mfu = med(o, "mfu")
                peer_mfu = ours_mfu * med(o, "ms_per_iter") / med(n, "ms_per_iter")
                out(f"| (a) baby{label}, model FLOP/s as a fraction of the measured f32 matmul peak | "
                    f"{peer_mfu:.2f} | {ours_mfu:.2f} | |")
        if report["full"][key]:
            n, o = report["full"][peer], report["full"][key]
            out(f"| (b) shakespeare_char 6/6/384{label}, s/iter (median) | {med(n, 's_per_iter'):.2f} | "
                  f"{med(o, 's_per_iter'):.2f} | {med(o, 's_per_iter') / med(n, 's_per_iter'):.2f} |")
            if peer != "nanogpt":
                continue
            ours_flops, peak = med(o, "model_flops_per_s"), med(o, "peak_flops_per_s")
            peer_flops = ours_flops * med(o, "s_per_iter") / med(n, "s_per_iter")  # same model and batch
            out(f"| (b) our model FLOP/s{label} vs measured f32 matmul peak | | "
                  f"{ours_flops / 1e9:.0f} / {peak / 1e9:.0f} GFLOP/s | "
                  f"{ours_flops / peak:.2f} of peak (nanoGPT {peer_flops / peak:.2f}) |")
    os.makedirs(os.path.join(ROOT, "benchmarks", "results"), exist_ok=True)
    from benchmarks.common import machine_tag
    with open(os.path.join(ROOT, "benchmarks", "results", f"nanogpt_side_by_side_{machine_tag()}.json"), "w") as f:
        json.dump(report, f, indent=2)
    with open(os.path.join(ROOT, "benchmarks", "results", f"nanogpt_side_by_side_{machine_tag()}.md"), "w") as f:
        f.write(table.getvalue())
    return 0


if __name__ == "__main__":
    sys.exit(main())
