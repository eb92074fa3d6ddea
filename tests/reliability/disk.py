"""A small disk for full-disk tests: a tmpfs mounted at a folder when this process may mount
(root in a container that allows it); otherwise the caller simulates ENOSPC and says so."""
from __future__ import annotations

import contextlib
import os
import subprocess


@contextlib.contextmanager
def small_disk(path: str, kib: int):
    """Yields True with a `kib` KiB tmpfs mounted at path, or False when mounting is not allowed."""
    os.makedirs(path, exist_ok=True)
    mounted = False
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={kib}k", "tmpfs", path],
                                 capture_output=True).returncode == 0
    try:
        yield mounted
    finally:
        if mounted:
            subprocess.run(["umount", "-l", path], capture_output=True)
