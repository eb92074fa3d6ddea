"""Shared helpers for the benchmark scripts: machine description and writing results."""
from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
from typing import Any, Sequence

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cpu_model() -> str:
    """lscpu's model name (falls back to platform.processor())."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return platform.processor() or "unknown CPU"


def cpu_isa() -> str:
    """The vector/matrix extensions lscpu lists that decide XLA:CPU's kernels (AVX2, AVX-512, AMX)."""
    wanted = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_tile")
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Flags:"):
                flags = set(line.split(":", 1)[1].split())
                return " ".join(f for f in wanted if f in flags) or "no AVX2"
    except (OSError, subprocess.SubprocessError):
        pass
    return "unknown"


def machine_tag() -> str:
    """A short file-name tag for the CPU type ("intel_xeon", "amd_epyc", else a slug of the
    model name): side-by-side results keep one file per machine type."""
    import re

    model = cpu_model()
    for key, tag in (("EPYC", "amd_epyc"), ("Xeon", "intel_xeon")):
        if key in model:
            return tag
    return re.sub(r"[^a-z0-9]+", "_", model.lower()).strip("_") or "unknown_cpu"


def load_average() -> float:
    """1-minute load average (0 where the OS has none)."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0


def machine() -> dict:
    """What a result was measured on: CPU model and vector extensions, core count, jax version, date, load average."""
    import jax
    return {"cpu": cpu_model(), "isa": cpu_isa(), "cores": os.cpu_count(), "jax": jax.__version__,
            "backend": jax.devices()[0].platform,
            "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "load_avg_1m": round(load_average(), 2)}


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table (cells formatted with str)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def write_results(name: str, markdown: str, data: Any) -> tuple[str, str]:
    """Writes results/<name>.md and results/<name>.json; returns both paths."""
    os.makedirs(RESULTS_DIR, exist_ok=True)
    md_path = os.path.join(RESULTS_DIR, f"{name}.md")
    json_path = os.path.join(RESULTS_DIR, f"{name}.json")
    with open(md_path, "w") as f:
        f.write(markdown.rstrip() + "\n")
    with open(json_path, "w") as f:
        json.dump(data, f, indent=1, default=str)
    return md_path, json_path
