"""Peak FLOP/s per device, for MFU = achieved model FLOP/s / peak.

GPUs: dense (no sparsity) datasheet numbers by jax `device_kind`. "bfloat16" is the tensor-core
rate with f32 accumulation (what XLA uses; GeForce cards run it at half their fp16-accumulate
rate); "float32" is TF32 tensor-core rate, XLA's default precision for f32 matmuls on Ampere+.
CPU: a measured f32 matmul rate (no datasheet applies), cached in ~/.cache/jaxmodels.
"""
from __future__ import annotations

import json
import os
import time
from typing import Optional

import jax
import jax.numpy as jnp

# device_kind substring -> {"bfloat16": FLOP/s, "float32": FLOP/s}. Longest match wins
# ("RTX 4070 Ti" before "RTX 4070", "H100 PCIe" before "H100").
GPU_PEAK_FLOPS = {
    "RTX 3060": {"bfloat16": 25.6e12, "float32": 12.7e12},
    "RTX 3090": {"bfloat16": 71.0e12, "float32": 35.6e12},
    "RTX 4070 Ti": {"bfloat16": 80.2e12, "float32": 40.1e12},
    "RTX 4070": {"bfloat16": 58.3e12, "float32": 29.1e12},
    "RTX 4080": {"bfloat16": 97.5e12, "float32": 48.7e12},
    "RTX 4090": {"bfloat16": 165.2e12, "float32": 82.6e12},
    "A10": {"bfloat16": 125.0e12, "float32": 62.5e12},
    "A100": {"bfloat16": 312.0e12, "float32": 156.0e12},
    "L4": {"bfloat16": 121.0e12, "float32": 60.0e12},
    "H100 PCIe": {"bfloat16": 756.0e12, "float32": 378.0e12},
    "H100": {"bfloat16": 989.0e12, "float32": 494.0e12},
    "H200": {"bfloat16": 989.0e12, "float32": 494.0e12},
}


def gpu_peak_flops(device_kind: str, dtype: str = "bfloat16") -> Optional[float]:
    """Datasheet dense peak for a GPU's device_kind, or None when the card is not listed."""
    dtype = "bfloat16" if dtype in ("bfloat16", "float16") else "float32"
    matches = [k for k in GPU_PEAK_FLOPS if k.lower() in device_kind.lower()]
    if not matches:
        return None
    return GPU_PEAK_FLOPS[max(matches, key=len)][dtype]


def cache_dir() -> str:
    return os.environ.get("JAXMODELS_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "jaxmodels"))


def measure_matmul_flops(n: int = 2048, repeats: int = 5, device=None) -> float:
    """Best-of-`repeats` f32 FLOP/s of a jitted n x n matmul on `device`."""
    device = device or jax.devices()[0]
    a = jax.device_put(jnp.ones((n, n), jnp.float32), device)
    matmul = jax.jit(lambda x, y: x @ y)
    matmul(a, a).block_until_ready()  # compile
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        matmul(a, a).block_until_ready()
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n ** 3 / best


def cpu_peak_flops() -> float:
    """Measured f32 matmul FLOP/s of this CPU, cached per (cpu, core count, jax version).

    A measurement taken on a busy machine reads low, so the cache keeps the best one seen and
    measures again whenever the machine is less loaded than it was then."""
    key = f"{jax.devices('cpu')[0].device_kind}|{os.cpu_count()}|{jax.__version__}"
    path = os.path.join(cache_dir(), "cpu_peak_flops.json")
    try:
        with open(path) as f:
            cached = json.load(f)
    except (OSError, ValueError):
        cached = {}
    entry = cached.get(key)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    if not isinstance(entry, dict) or load + 0.5 < entry.get("load", 0.0):
        measured = measure_matmul_flops(device=jax.devices("cpu")[0])
        if not isinstance(entry, dict) or measured > entry["flops"]:
            entry = {"flops": measured, "load": load}
        else:
            entry = {**entry, "load": min(entry["load"], load)}
        cached[key] = entry
        try:
            os.makedirs(cache_dir(), exist_ok=True)
            tmp = f"{path}.{os.getpid()}.tmp"
            with open(tmp, "w") as f:
                json.dump(cached, f)
            os.replace(tmp, path)  # atomic: parallel test workers never read half a file
        except OSError:
            pass  # a read-only home only costs a re-measurement next time
    return float(entry["flops"])


def peak_flops(device=None, dtype: str = "float32") -> Optional[float]:
    """Peak FLOP/s of `device` (default: the first) for compute `dtype`; None if unknown."""
    device = device or jax.devices()[0]
    if device.platform == "cpu":
        return cpu_peak_flops()
    if device.platform == "gpu" or "nvidia" in device.device_kind.lower():
        return gpu_peak_flops(device.device_kind, dtype)
    return None


def peak_units(mesh) -> int:
    """How many times peak_flops the mesh has: its device count, except on a CPU, whose devices
    (train/cpu_devices.py: one per core) share the one machine cpu_peak_flops measured."""
    if mesh is None or mesh.devices.flat[0].platform == "cpu":
        return 1
    return int(mesh.size)


def mfu(flops_per_example: float, examples_per_s: float, peak: Optional[float],
        n_devices: int = 1) -> Optional[float]:
    """Model FLOPs utilization over n_devices; None when FLOPs or the peak are unknown."""
    if not peak or flops_per_example <= 0:
        return None
    return flops_per_example * examples_per_s / (peak * n_devices)
