"""One memory budget: the number XLA's GPU allocator is capped at is the number the fit check
(train/memory.py, launch.memory, memory.auto_fit) compares against.

The cap is a fraction of the card, XLA_CLIENT_MEM_FRACTION, set before jax is imported
(launch/_env.py): min(HEADROOM, memory.budget_gb / card). On a 12 GB card with the default
12 GB budget that is 0.95 of the card, 11.4 GB; a check against the full 12 would pass
configs the allocator then cannot hold. So the check asks `usable_budget_bytes`, which
applies the same formula (or the fraction already set, by the user or by launch/_env.py).

No jax import here: launch/_env.py uses this module before jax is loaded.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from typing import Mapping, Optional

GiB = 1024 ** 3
# Left to the CUDA context, cuDNN/cuBLAS workspaces and other processes on the card.
HEADROOM = 0.95
FRACTION_VAR = "XLA_CLIENT_MEM_FRACTION"
OLD_FRACTION_VAR = "XLA_PYTHON_CLIENT_MEM_FRACTION"  # deprecated; still honoured when set


def gpu_total_gb() -> Optional[float]:
    """Memory of the first GPU per nvidia-smi, in GiB; None without an NVIDIA GPU."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=20, check=True).stdout
        return float(out.strip().splitlines()[0]) / 1024.0  # MiB -> GiB
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


def allocator_fraction(budget_gb: float, total_gb: float) -> float:
    """The fraction of a `total_gb` card the allocator is capped at for `budget_gb`."""
    return min(HEADROOM, float(budget_gb) / float(total_gb))


def fraction_in(environ: Mapping[str, str]) -> Optional[float]:
    """The allocator fraction already set in `environ` (ours or the user's), if any."""
    for var in (FRACTION_VAR, OLD_FRACTION_VAR):
        if var in environ:
            try:
                return float(environ[var])
            except ValueError:
                return None
    return None


def usable_budget_bytes(budget_gb: float, environ: Optional[Mapping[str, str]] = None,
                        total_gb: Optional[float] = None) -> int:
    """What a run may really use: memory.budget_gb, lowered to the allocator cap on a GPU.

    total_gb: the card's memory (default: nvidia-smi; None without a GPU, where nothing caps
    the allocator and the budget stands as given)."""
    environ = os.environ if environ is None else environ
    budget = float(budget_gb) * GiB
    total = gpu_total_gb() if total_gb is None else total_gb
    if not total:
        return int(budget)
    fraction = fraction_in(environ)
    if fraction is None:
        fraction = allocator_fraction(budget_gb, total)
    return int(min(budget, fraction * total * GiB))
