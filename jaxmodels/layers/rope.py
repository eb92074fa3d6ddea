"""Rotary position embeddings in the Hugging Face "rotate half" convention (LLaMA, Mistral, Qwen2).

HF pairs channel i with channel i + D/2 (not the interleaved pairs of the original Meta
code; HF's conversion script permutes q/k weights so that rotate-half is equivalent), so a
head vector x = [x1, x2] rotates as  x * cos + [-x2, x1] * sin  with the D/2 frequencies
repeated twice.

Frequency scaling for long contexts (`rope_scaling` / `rope_parameters` in config.json):
  "default"  inv_freq_i = theta^(-2i/D)
  "linear"   inv_freq / factor                                (position interpolation)
  "llama3"   Llama 3.1's band-wise rule: wavelengths longer than
             original_max_position_embeddings / low_freq_factor are divided by `factor`,
             shorter than .../high_freq_factor are kept, and the band between is a
             smooth interpolation of the two.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np

ROPE_TYPES = ("default", "linear", "llama3")


def rope_inv_freq(head_dim: int, theta: float = 10000.0,
                  scaling: Optional[Mapping[str, Any]] = None) -> np.ndarray:
    """The D/2 inverse frequencies (f32 numpy), after the optional scaling rule."""
    # f64 on host then f32, like HF's f32 computation up to rounding of the last ulp.
    inv_freq = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
    kind = (scaling or {}).get("rope_type", (scaling or {}).get("type", "default")) or "default"
    if kind not in ROPE_TYPES:
        raise ValueError(f"unsupported rope scaling {kind!r}; supported: {', '.join(ROPE_TYPES)}")
    if kind == "linear":
        inv_freq = inv_freq / float(scaling["factor"])
    elif kind == "llama3":
        factor = float(scaling["factor"])
        low = float(scaling.get("low_freq_factor", 1.0))
        high = float(scaling.get("high_freq_factor", 4.0))
        old_len = float(scaling.get("original_max_position_embeddings", 8192))
        wavelen = 2 * math.pi / inv_freq
        scaled = np.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
        smooth = (old_len / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= old_len / high) & (wavelen <= old_len / low)
        inv_freq = np.where(medium, smoothed, scaled)
    return inv_freq.astype(np.float32)


def rope_cos_sin(positions_T: jax.Array, inv_freq: np.ndarray) -> tuple[jax.Array, jax.Array]:
    """cos_TD, sin_TD (f32) for absolute positions; D = 2 * len(inv_freq)."""
    angles_TF = positions_T.astype(jnp.float32)[:, None] * jnp.asarray(inv_freq)[None, :]
    angles_TD = jnp.concatenate([angles_TF, angles_TF], axis=-1)
    return jnp.cos(angles_TD), jnp.sin(angles_TD)


def apply_rope(x_BTHD: jax.Array, cos_TD: jax.Array, sin_TD: jax.Array) -> jax.Array:
    """Rotates each head vector; computed in f32, returned in x's dtype."""
    x = x_BTHD.astype(jnp.float32)
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    cos, sin = cos_TD[None, :, None, :], sin_TD[None, :, None, :]
    return (x * cos + rotated * sin).astype(x_BTHD.dtype)
