"""Memory of each flagship config's train step against the 12 GB budget.

    python -m benchmarks.memory_table            # every row, one subprocess each
    python -m benchmarks.memory_table --only dit # re-measure rows whose label contains "dit"
                                                 # (merged into the saved table)

Each row loads a config (+ overrides), compiles its real train step on abstract shapes
(`jaxmodels.train.memory.estimate`, the library function behind `launch.memory`; nothing
is allocated) and reads XLA's memory analysis. The numbers are what the backend compiled
for plans (XLA:CPU here); a GPU compile fuses differently, so treat them as estimates.
Writes benchmarks/results/memory_table.{md,json}.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

if __package__ in (None, ""):  # `python benchmarks/memory_table.py`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import REPO_ROOT, RESULTS_DIR, machine, markdown_table, write_results

# (label, config spec, overrides[, model size]). A model size is applied as
# `--config.model.size=S` plus every field of SIZES[S] the config's model section lists:
# LM configs built with `model_section` list every field, so `model.size` alone changes nothing.
ROWS = [
    ("GPT-2 124M, micro-batch 8 x 1024, bf16, full-logits loss (the recipe before issue #14)", "configs/gpt2_124m.py",
     ["train.micro_batches=64", "kernels.cross_entropy=dense"]),
    ("GPT-2 124M, micro-batch 16 x 1024, bf16, chunked loss (the config's default)", "configs/gpt2_124m.py", []),
    ("DiT-S/2, 32x32x3 pixels, batch 128 (dit_small)", "configs/dit_small.py", ["model.size=dit-s/2"]),
    ("DiT-S/2, 32x32x4 latents, batch 256, remat", "configs/dit_b2.py", ["model.size=dit-s/2", "train.micro_batches=1"]),
    ("DiT-B/2, 32x32x4 latents, batch 256, remat", "configs/dit_b2.py", ["train.micro_batches=1"]),
    ("DiT-B/2, same, 2 micro-batches of 128 (the config's default)", "configs/dit_b2.py", []),
    ("DiT-XL/2, 32x32x4 latents, batch 256, remat", "configs/dit_b2.py", ["model.size=dit-xl/2", "train.micro_batches=1"]),
    ("DDPM U-Net 64x64, batch 64", "configs/unet_ddpm64.py", ["train.micro_batches=1"]),
    ("DDPM U-Net 64x64, 2 micro-batches of 32 (the config's default)", "configs/unet_ddpm64.py", []),
    ("Mamba-130M, 8 x 2048", "configs/mamba_130m.py", []),
    ("Mamba-370M, 8 x 2048", "configs/mamba_130m.py", [], "mamba-370m"),
    ("Mamba-370M, 4 x 2048", "configs/mamba_130m.py", ["train.micro_batches=64"], "mamba-370m"),
    ("RWKV-7 L12-D768, 16 x 512", "configs/rwkv7_l12_d768.py", []),
    ("RetNet base, 8 x 2048", "configs/retnet_base.py", []),
    ("Llama-3.2-1B LoRA (f32 base), 4 x 512", "configs/llama32_1b_lora.py", []),
    ("Llama-3.2-1B QLoRA (NF4), 4 x 512", "configs/llama32_1b_lora.py:qlora", []),
    ("Llama-3.2-3B QLoRA (NF4), 4 x 512", "configs/llama32_1b_lora.py:qlora", [], "llama-3.2-3b"),
    ("Llama-2-7B QLoRA (NF4), 2 x 512", "configs/llama2_7b_qlora.py", []),
    ("MoE GPT 255M (12 x 768, 8 experts of 1536, top-2; 85M active), 2 x 16 x 512", "configs/moe_gpt.py", []),
]

MiB = 1024 ** 2
GiB = 1024 ** 3


def size_overrides(cfg, size: str) -> list[str]:
    """`model.size=S` plus `model.<field>=<value>` for each field of SIZES[S] that the section
    lists with a different value."""
    from jaxmodels.models import family

    fields = family(cfg.model.name).SIZES[size]
    return [f"model.size={size}"] + [f"model.{k}={v}" for k, v in fields.items()
                                     if k in cfg.model and cfg.model[k] != v]


def measure_row(spec: str, overrides: list[str], size: str = "") -> dict:
    """Compiles one config's train step on abstract shapes; returns the memory report as a dict."""
    from jaxmodels.config import load_config
    from jaxmodels.train.memory import estimate

    path, _, variant = spec.partition(":")
    full_spec = os.path.join(REPO_ROOT, path) + (f":{variant}" if variant else "")
    cfg = load_config(full_spec, overrides)
    if size:
        overrides = list(overrides) + size_overrides(cfg, size)
        cfg = load_config(full_spec, overrides)
    t0 = time.perf_counter()
    report = estimate(cfg)
    k = int(cfg.train.micro_batches)
    return {
        "backend": f"{report.backend}: {report.device_kind}",
        "params": report.params, "optimizer": report.optimizer, "ema": report.ema,
        "batch": report.batch, "temp": report.temp, "outputs": report.outputs,
        "total": report.total, "budget": report.budget, "fits": report.fits,
        "micro_batch": int(cfg.train.batch_size) // k, "micro_batches": k,
        "dtype": str(cfg.model.get("dtype", "float32")), "remat": str(cfg.model.get("remat", "")),
        "compile_s": round(time.perf_counter() - t0, 1), "overrides": list(overrides),
    }


def run_in_subprocess(index: int, timeout: float) -> dict:
    """Runs one row in a fresh interpreter so compile memory is returned to the OS between rows."""
    cmd = [sys.executable, "-m", "benchmarks.memory_table", "--row", str(index)]
    try:
        proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    return {"error": " / ".join(tail) or f"exit status {proc.returncode}"}


def mib(n: int) -> str:
    return f"{n / MiB:,.0f}"


def render(results: list[dict], info: dict) -> str:
    header = ["config", "command overrides", "params MiB", "optimizer MiB", "activations + temp MiB",
              "other MiB (EMA, batch, outputs)", "total GiB", "budget GiB", "fits?", "compiled for"]
    rows = []
    for r in results:
        cmd = f"`{r['spec']}`" + "".join(f" `--config.{o}`" for o in r["overrides"])
        if "error" in r:
            rows.append([r["label"], cmd] + ["—"] * 6 + [f"error: {r['error']}", ""])
            continue
        other = r["ema"] + r["batch"] + r["outputs"]
        rows.append([r["label"], cmd, mib(r["params"]), mib(r["optimizer"]), mib(r["temp"]), mib(other),
                     f"{r['total'] / GiB:.2f}", f"{r['budget'] / GiB:.0f}",
                     "yes" if r["fits"] else "**no**", r["backend"]])
    return (f"Measured {info['date_utc']} on {info['cpu']} ({info['cores']} cores), jax {info['jax']}.\n\n"
            + markdown_table(header, rows))


def in_table_order(results: list[dict]) -> list[dict]:
    """Sorts result rows as in ROWS (rows no longer listed go last)."""
    order = {row[0]: i for i, row in enumerate(ROWS)}
    return sorted(results, key=lambda r: order.get(r["label"], len(ROWS)))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--row", type=int, help="measure only row N in this process and print RESULT <json>")
    parser.add_argument("--only", default="", help="measure the rows whose label contains this text")
    parser.add_argument("--timeout", type=float, default=1200.0, help="seconds per row")
    parser.add_argument("--render-only", action="store_true", help="rewrite the .md from the saved JSON")
    args = parser.parse_args(argv)
    if args.render_only:
        with open(os.path.join(RESULTS_DIR, "memory_table.json")) as f:
            saved = json.load(f)
        rows = in_table_order(saved["rows"])
        md = render(rows, saved["machine"])
        write_results("memory_table", md, {"machine": saved["machine"], "rows": rows})
        print(md)
        return 0
    if args.row is not None:
        label, spec, overrides, *size = ROWS[args.row]
        print("RESULT " + json.dumps(measure_row(spec, overrides, *size)), flush=True)
        return 0
    results = []
    for i, (label, spec, overrides, *_) in enumerate(ROWS):
        if args.only.lower() not in label.lower():
            continue
        t0 = time.perf_counter()
        r = {"label": label, "spec": spec, "overrides": overrides, **run_in_subprocess(i, args.timeout)}
        status = r.get("error") or f"{r['total'] / GiB:.2f} GiB, fits={r['fits']}"
        print(f"[{time.perf_counter() - t0:6.0f} s] {label}: {status}", flush=True)
        results.append(r)
    info = machine()
    if args.only:  # merge into the saved table: replace the rows measured now
        try:
            with open(os.path.join(RESULTS_DIR, "memory_table.json")) as f:
                saved = json.load(f)["rows"]
            fresh = {r["label"]: r for r in results}
            results = in_table_order([fresh.pop(r["label"], r) for r in saved] + list(fresh.values()))
        except (OSError, ValueError, KeyError):
            pass
    md = render(results, info)
    print(md)
    write_results("memory_table", md, {"machine": info, "rows": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
