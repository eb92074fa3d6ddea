"""DiT-S/2 training on this CPU, side by side with facebookresearch/DiT (PyTorch).

facebookresearch/DiT is not part of this repository: fetch it somewhere outside the tree and
give a Python that has torch, torchvision and timm (`pip install --no-deps timm`):

    python -m benchmarks.dit_side_by_side --dit /tmp/dit --torch-python /tmp/torchvenv/bin/python [--repeats 2]

Both sides train DiT-S/2 (33M params) on random 4x32x32 latents, batch 32, class labels,
learned sigma (the hybrid MSE + VLB loss), AdamW lr 1e-4, an EMA of the params, f32, 2 threads.
The peer runs its own recipe: one batch of 32, no activation checkpointing (its train.py).
Ours runs three ways: like for like (one batch of 32, remat "none"), our fastest f32 CPU
recipe (the train_throughput DiT row), and that recipe with bf16 matmul operands
(`kernels.matmul=bf16`, f32 accumulation: the CPU's bf16 units, AMX on recent Xeons). Runs alternate peer, ours, ours-best, peer, ...; each run
reports the median of its timed steps after warm-up; the table gives medians over runs and
the ratio ours / peer, plus model FLOP/s as a fraction of the measured f32 matmul peak.
--peer-bf16 also times the peer with PyTorch's bf16-operand switch for f32 models
(torch.backends.mkldnn.{matmul,conv}.fp32_precision='bf16') beside our kernels.matmul=bf16 row.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

from benchmarks.common import REPO_ROOT, machine, machine_tag, markdown_table, write_results
from jaxmodels import hugepages

THREADS_ENV = {"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"}
BASE = ["model.size=dit-s/2", "model.dtype=float32", "train.batch_size=32"]
OURS = {
    "like for like (1 batch of 32, no remat)": BASE + ["model.remat=none", "train.micro_batches=1"],
    "our CPU recipe (4 micro-batches, dense-output remat)": BASE + [
        "model.remat=dots_with_no_batch_dims_saveable", "train.micro_batches=4"],
    # Not like for like: bf16 matmul operands (f32 accumulation, everything else f32).
    "our CPU recipe + kernels.matmul=bf16": BASE + [
        "model.remat=dots_with_no_batch_dims_saveable", "train.micro_batches=4", "kernels.matmul=bf16"],
}

# The peer's training step, as its train.py runs it (model, diffusion.training_losses, AdamW,
# update_ema), on random latents; timed per step after warm-up.
PEER_CODE = r"""
import json, statistics, sys, time
import torch
torch.set_num_threads(2)
if {bf16}:  # PyTorch's bf16 operands for f32 matmuls and convolutions on a CPU (oneDNN, AMX)
    torch.backends.mkldnn.matmul.fp32_precision = "bf16"
    torch.backends.mkldnn.conv.fp32_precision = "bf16"
torch.manual_seed(0)
sys.path.insert(0, {dit!r})
from models import DiT_models
from diffusion import create_diffusion
from copy import deepcopy
model = DiT_models["DiT-S/2"](input_size=32, num_classes=1000)
ema = deepcopy(model).requires_grad_(False)
diffusion = create_diffusion(timestep_respacing="")
opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0)
x = torch.randn(32, 4, 32, 32)
y = torch.randint(0, 1000, (32,))
times = []
for i in range({warmup} + {steps}):
    t0 = time.perf_counter()
    t = torch.randint(0, diffusion.num_timesteps, (32,))
    loss = diffusion.training_losses(model, x, t, dict(y=y))["loss"].mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    with torch.no_grad():
        for e, p in zip(ema.parameters(), model.parameters()):
            e.mul_(0.9999).add_(p, alpha=1 - 0.9999)
    times.append(time.perf_counter() - t0)
n = sum(p.numel() for p in model.parameters())
print("RESULT", json.dumps({{"median_step_s": statistics.median(times[{warmup}:]), "params": n,
                            "torch": torch.__version__}}))
"""

OURS_CODE = (
    "import json; from jaxmodels.config import load_config; from jaxmodels.train.bench import benchmark; "
    "cfg = load_config('configs/dit_b2.py', {overrides!r}); "
    "r = benchmark(cfg, steps={steps}, warmup={warmup}); print('RESULT', json.dumps(r))")


def run(cmd: list[str], cwd: str, ours: bool = False) -> dict:
    env = dict(os.environ, **THREADS_ENV)
    if ours:  # as launch.train runs: glibc's huge-page tunable where it helps (jaxmodels/hugepages.py)
        env = hugepages.with_tunable(env)
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:3])} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    line = next(l for l in out.stdout.splitlines() if l.startswith("RESULT"))
    return json.loads(line.split(" ", 1)[1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dit", required=True, help="a facebookresearch/DiT checkout")
    p.add_argument("--torch-python", required=True, help="a python with torch, torchvision, timm")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--name", default=None, help="results file name (default: dit_side_by_side_<machine type>)")
    p.add_argument("--variant", action="append", default=[], metavar="OF:OVERRIDE[,OVERRIDE...]",
                   help="also time one of our rows with extra overrides, e.g. 1:model.scan_layers=False "
                        "(OF: the row's 0-based index in OURS)")
    p.add_argument("--peer-bf16", action="store_true",
                   help="also time the peer with PyTorch's bf16 matmul/conv operands for f32 models "
                        "(torch.backends.mkldnn.*.fp32_precision='bf16'), like for like with kernels.matmul=bf16")
    args = p.parse_args()
    info = machine()
    ours = dict(OURS)
    for v in args.variant:
        of, _, extra = v.partition(":")
        label, overrides = list(OURS.items())[int(of)]
        extra = [o for o in extra.split(",") if o]
        ours[f"{label} + {' '.join(extra)}"] = overrides + extra
    peers = ["peer"] + (["peer_bf16"] if args.peer_bf16 else [])
    runs = {**{k: [] for k in peers}, **{k: [] for k in ours}}
    for rep in range(args.repeats):
        for peer in peers:
            code = PEER_CODE.format(dit=os.path.abspath(args.dit), steps=args.steps, warmup=args.warmup,
                                    bf16=peer == "peer_bf16")
            runs[peer].append(run([args.torch_python, "-c", code], cwd=os.path.abspath(args.dit)))
            print(f"[{rep}] {peer} {runs[peer][-1]['median_step_s']:.2f} s/step", flush=True)
        for label, overrides in ours.items():
            code = OURS_CODE.format(overrides=overrides, steps=args.steps, warmup=args.warmup)
            runs[label].append(run([sys.executable, "-c", code], cwd=REPO_ROOT, ours=True))
            print(f"[{rep}] {label} {runs[label][-1]['median_step_s']:.2f} s/step", flush=True)
    peer_s = statistics.median(r["median_step_s"] for r in runs["peer"])
    ref = runs[next(iter(OURS))][0]
    flops_per_step = ref["model_flops_per_s"] * ref["median_step_s"]  # same model, same batch
    peak = max(r["peak_flops_per_s"] or 0 for k in ours for r in runs[k]) or None
    rows = [["facebookresearch/DiT (PyTorch " + runs["peer"][0]["torch"] + ")", f"{peer_s:.2f}", "1.00",
             f"{flops_per_step / peer_s / 1e9:.0f}", f"{flops_per_step / peer_s / peak:.2f}" if peak else "—"]]
    for label in ours:
        s = statistics.median(r["median_step_s"] for r in runs[label])
        rows.append([f"jaxmodels, {label}", f"{s:.2f}", f"{s / peer_s:.2f}", f"{flops_per_step / s / 1e9:.0f}",
                     f"{flops_per_step / s / peak:.2f}" if peak else "—"])
    if args.peer_bf16:  # bf16 operands on both sides: ratios against the bf16 peer
        pb = statistics.median(r["median_step_s"] for r in runs["peer_bf16"])
        rows.append(["facebookresearch/DiT, mkldnn fp32_precision=bf16", f"{pb:.2f}", f"{pb / peer_s:.2f}",
                     f"{flops_per_step / pb / 1e9:.0f}", "—"])
        for label in ours:
            if "kernels.matmul=bf16" in ours[label]:
                s = statistics.median(r["median_step_s"] for r in runs[label])
                rows.append([f"jaxmodels, {label}: ratio to the bf16 peer", f"{s:.2f}", f"{s / pb:.2f}",
                             f"{flops_per_step / s / 1e9:.0f}", "—"])
    header = ["DiT-S/2, batch 32, f32, 2 threads", "s/step (median)", "ratio to peer", "model GFLOP/s",
              "fraction of f32 matmul peak"]
    md = (f"{info['cpu']} ({info['cores']} cores; {info['isa']}), jax {info['jax']}, {info['date_utc']}, "
          f"1-min load average {info['load_avg_1m']} at the start; peak = "
          f"{peak / 1e9 if peak else 0:.0f} GFLOP/s\n\n" + markdown_table(header, rows))
    print(md)
    write_results(args.name or f"dit_side_by_side_{machine_tag()}", md, {"machine": info, "runs": runs})
    return 0


if __name__ == "__main__":
    sys.exit(main())
