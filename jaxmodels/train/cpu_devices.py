"""On a CPU, the trainer makes each core an XLA device, so the train step runs data parallel
over the cores (one row slice per core, jaxmodels/train/data_parallel.py) instead of as one
program whose ops each split themselves over the cores.

Why: XLA:CPU runs a step's ops one after another on one thread and hands parts of the larger
ones to its pool. A small model's ops are too small to split well: nanoGPT's CPU "baby"
(4/4/128, batch 12 x 64) ran its 2-core step at 1.35x its 1-core speed, its ~470 ops each
waiting tens of microseconds for the other core. One device per core runs two whole
programs side by side with one all-reduce of the gradients: 24.8 -> 20.0 ms per step on the
2-core Intel Xeon (docs/cpu_notes.md; BENCHMARKS.md has the side-by-side runs).

The device count has to be fixed before jax starts its CPU backend, so launch.train (and
train.bench) call `configure(cfg)` right after reading the config. `mesh.cpu_devices`:
0 = one per usable core, cut to the largest count that divides a micro-batch's rows;
1 = off (one device using every core, as before); N = at most N. With the default
mesh (data=-1) the batch then splits over those devices; mesh.data=1 also turns it off.
Each device holds a whole copy of the train state (params and optimizer moments).
"""
from __future__ import annotations

import os
from typing import Optional

import jax
import ml_collections

from jaxmodels.config import ConfigError

DEVICE_COUNT_FLAG = "xla_force_host_platform_device_count"


def usable_cores() -> int:
    """Cores this process may run on (its affinity mask, as taskset or a container sets it)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def cpu_runs_the_step(environ=os.environ) -> bool:
    """Whether jax will train on the CPU: no JAX_PLATFORMS naming another platform first and no
    NVIDIA GPU device file (the check launch.memory uses; jax itself is not started to ask)."""
    platforms = environ.get("JAX_PLATFORMS", "")
    if platforms and platforms.split(",")[0].strip() != "cpu":
        return False
    return platforms.startswith("cpu") or not os.path.exists("/dev/nvidia0")


def devices_for(cfg: ml_collections.ConfigDict, cores: int) -> int:
    """How many CPU devices the run gets: mesh.cpu_devices (0 = cores), at most the rows of
    one micro-batch and dividing them, so every device gets the same number of rows."""
    wanted = int(cfg.mesh.get("cpu_devices", 0))
    if wanted < 0:
        raise ConfigError(f"mesh.cpu_devices={wanted}: use 0 (one per core), 1 (off) or a device count")
    n = cores if wanted == 0 else wanted
    rows = int(cfg.train.batch_size) // max(1, int(cfg.train.micro_batches))
    return max(d for d in range(1, max(1, min(n, rows)) + 1) if rows % d == 0)


def configure(cfg: ml_collections.ConfigDict, cores: Optional[int] = None) -> Optional[int]:
    """Sets jax's CPU device count for this run before the backend starts; returns it, or None
    when it was left alone: the backend already started (an in-process caller), the step
    runs on a GPU, or the user set a count (XLA_FLAGS or jax_num_cpu_devices). Not for a
    multi-process run: launch.train calls it only when train.distributed joined none."""
    from jax._src import xla_bridge

    if xla_bridge.backends_are_initialized() or not cpu_runs_the_step():
        return None
    if DEVICE_COUNT_FLAG in os.environ.get("XLA_FLAGS", "") or int(jax.config.jax_num_cpu_devices) > 0:
        return None
    n = devices_for(cfg, usable_cores() if cores is None else cores)
    if n > 1:
        jax.config.update("jax_num_cpu_devices", n)
    return n
