"""Transparent huge pages for the large host buffers XLA:CPU allocates on every step.

Why: XLA:CPU allocates a step's temporary buffer afresh on every execution (DiT-S/2's recipe
step: one 758 MB block), and glibc serves a block that large with mmap and returns it with
munmap, so every step page-faults the whole block back in, 4 KiB at a time: 186,000 minor
faults and ~0.33 s of kernel time per 6 s step on the Intel Xeon dev VM. With glibc's
`glibc.malloc.hugetlb=1` tunable, malloc asks for transparent huge pages on those blocks
(madvise(MADV_HUGEPAGE)): 675 faults, ~0.16 s, and the step took 0.97-1.03x the time, median
0.98 over six alternating pairs of processes (`python -m benchmarks.hugepages_ab`; BENCHMARKS.md
"CPU speed per machine type"): a small gain, within the noise of a single pair.

A glibc tunable is read once when a process starts, so the launch commands (launch/_env.py)
re-execute themselves once with it set, before anything else ran. Only where it helps: Linux
with glibc >= 2.35 and transparent huge pages in "madvise" mode (in "always" mode every large
block already gets them; in "never" mode the tunable does nothing). JAXMODELS_HUGEPAGES=0
turns it off. No jax import here: this runs before jax is loaded.
"""
from __future__ import annotations

import os
import platform
import sys
from typing import Mapping, MutableMapping, Optional

TUNABLE = "glibc.malloc.hugetlb=1"
_THP_MODE = "/sys/kernel/mm/transparent_hugepage/enabled"
_DONE = "JAXMODELS_HUGEPAGES_SET"


def _glibc_at_least(major: int, minor: int) -> bool:
    name, version = platform.libc_ver()
    if name != "glibc" or not version:
        return False
    try:
        have = tuple(int(p) for p in version.split(".")[:2])
    except ValueError:
        return False
    return have >= (major, minor)


def _thp_mode() -> str:
    try:
        with open(_THP_MODE) as f:
            text = f.read()
    except OSError:
        return ""
    return text[text.find("[") + 1:text.find("]")] if "[" in text else ""


def wanted(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether a process started with `environ` should get the tunable."""
    if environ.get("JAXMODELS_HUGEPAGES", "1").strip() in ("0", "false", "no"):
        return False
    if "glibc.malloc.hugetlb" in environ.get("GLIBC_TUNABLES", ""):
        return False  # set already (by us or by the user): keep the user's value
    return sys.platform.startswith("linux") and _glibc_at_least(2, 35) and _thp_mode() == "madvise"


def with_tunable(environ: Mapping[str, str] = os.environ) -> dict:
    """A copy of `environ` with the tunable added when `wanted` (for child processes)."""
    env = dict(environ)
    if wanted(env):
        env["GLIBC_TUNABLES"] = ":".join(filter(None, (env.get("GLIBC_TUNABLES", ""), TUNABLE)))
    return env


def reexec_if_wanted(environ: MutableMapping[str, str] = os.environ,
                     argv: Optional[list] = None) -> None:
    """Re-executes this process (same pid, same arguments) once with the tunable set."""
    if environ.get(_DONE) or not wanted(environ):
        return
    argv = list(getattr(sys, "orig_argv", []) if argv is None else argv)
    if not argv:
        return
    env = with_tunable(environ)
    env[_DONE] = "1"  # never loop, whatever the exec'd process makes of the tunable
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, [sys.executable] + argv[1:], env)
    except OSError:
        return  # keep running without it
