"""Shared helpers for the trainer tests."""
from __future__ import annotations

import os

import jax
import numpy as np

from jaxmodels.config import load_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOY_CONFIG = os.path.join(ROOT, "tests", "train", "toy_config.py")


def toy_cfg(variant: str = "", **overrides):
    """The toy config with "a.b=value" style overrides given as a__b=value keywords."""
    spec = TOY_CONFIG + (f":{variant}" if variant else "")
    return load_config(spec, [f"{k.replace('__', '.')}={v}" for k, v in overrides.items()])


def max_abs_diff(a, b) -> float:
    return max(float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def bit_identical(a, b) -> bool:
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return len(la) == len(lb) and all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(la, lb))
