"""Tiny image folders for data tests (written with PIL at test time)."""
from __future__ import annotations

import os

import numpy as np
from PIL import Image


def make_folder(root: str, classes: int = 2, per_class: int = 20, size: int = 16, corrupt: int = 0) -> list[str]:
    """root/<class>/<i>.png; the first `corrupt` images of class 0 hold garbage bytes.
    Returns the corrupt files' paths."""
    rng = np.random.default_rng(0)
    bad = []
    for c in range(classes):
        folder = os.path.join(root, f"class{c}")
        os.makedirs(folder, exist_ok=True)
        for i in range(per_class):
            path = os.path.join(folder, f"{i:03d}.png")
            if c == 0 and i < corrupt:
                with open(path, "wb") as f:
                    f.write(b"\x89PNG\r\n\x1a\n" + rng.bytes(64))  # a PNG header, then garbage
                bad.append(path)
            else:
                Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(path)
    return bad
