"""Ways to damage a finished checkpoint on disk (shared by the tests and benchmarks/faults.py)."""
from __future__ import annotations

import os
import random
import shutil

DAMAGE_KINDS = ("truncate", "delete", "flip", "meta")


def _files(folder: str) -> list[str]:
    return sorted(os.path.join(r, f) for r, _, fs in os.walk(folder) for f in fs)


def largest_file(folder: str) -> str:
    return max(_files(folder), key=os.path.getsize)


def flip_bytes(path: str, n: int = 64, rng: random.Random | None = None) -> None:
    """Overwrites n random bytes in the middle of the file in place (size unchanged)."""
    rng = rng or random.Random(0)
    size = os.path.getsize(path)
    n = min(n, max(1, size // 2))
    at = size // 2 - n // 2
    with open(path, "r+b") as f:
        f.seek(at)
        old = f.read(n)
        new = bytes((b ^ rng.randrange(1, 256)) for b in old)  # every byte changes
        f.seek(at)
        f.write(new)


def damage(step_dir: str, kind: str, rng: random.Random | None = None) -> str:
    """Damages checkpoint folder `step_dir` one way; returns what was done."""
    rng = rng or random.Random(0)
    state = os.path.join(step_dir, "state")
    if kind == "truncate":
        path = largest_file(state)
        os.truncate(path, os.path.getsize(path) // 2)
        return f"truncated {path}"
    if kind == "delete":
        path = rng.choice(_files(state))
        os.remove(path)
        return f"deleted {path}"
    if kind == "flip":
        path = largest_file(state)
        flip_bytes(path, 64, rng)
        return f"flipped 64 bytes of {path}"
    if kind == "meta":
        meta = os.path.join(step_dir, "meta")
        shutil.rmtree(meta) if os.path.isdir(meta) else os.remove(meta)
        return f"removed {meta}"
    raise ValueError(f"unknown damage {kind!r}; valid: {', '.join(DAMAGE_KINDS)}")
