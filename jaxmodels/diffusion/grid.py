"""Images -> one PNG grid (sample sheets for eval and the README)."""
from __future__ import annotations

import math
import os
from typing import Optional

import numpy as np
from PIL import Image


def make_grid(images, rows: Optional[int] = None, pad: int = 1, pad_value: int = 255) -> np.ndarray:
    """uint8 [H', W', C] grid of images [N, H, W, C] (float in [-1, 1] or uint8), row-major.

    rows defaults to ceil(sqrt(N)); empty cells stay pad_value.
    """
    images = np.asarray(images)
    if images.dtype != np.uint8:
        images = np.clip(np.round((images.astype(np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)
    n, h, w, c = images.shape
    rows = rows or max(1, math.ceil(math.sqrt(n)))
    cols = math.ceil(n / rows)
    grid = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, c), pad_value, np.uint8)
    for i in range(n):
        r, k = divmod(i, cols)
        y, x = pad + r * (h + pad), pad + k * (w + pad)
        grid[y:y + h, x:x + w] = images[i]
    return grid


def save_grid(images, path: str, rows: Optional[int] = None, scale: int = 1) -> str:
    """Writes make_grid(images, rows) as a PNG (each pixel repeated `scale` times); returns path."""
    grid = make_grid(images, rows)
    if grid.shape[-1] == 1:
        grid = grid[..., 0]
    img = Image.fromarray(grid)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    img.save(path)
    return path
