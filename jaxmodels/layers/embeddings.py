"""Fixed and learned embeddings of positions and diffusion timesteps.

- `timestep_embedding`: the ADM / DiT sinusoid of a (possibly fractional) timestep,
  cos half first then sin half.
- `TimestepEmbedder`: DiT's sinusoid -> Dense -> SiLU -> Dense.
- `sincos_1d`, `sincos_2d`: the frozen MAE / DiT position tables (sin half first).
"""
from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxmodels.layers.dense import Dense


def timestep_embedding(t_N: jax.Array, dim: int, max_period: float = 10000.0) -> jax.Array:
    """Sinusoidal timestep features [N, dim] (DiT/ADM: [cos(t f), sin(t f)], f geometric).

    Frequencies f_i = max_period^(-i / half), i < half = dim // 2. An odd dim gets a zero
    column at the end. Computed in f32.
    """
    half = dim // 2
    freqs_F = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    args_NF = jnp.asarray(t_N, jnp.float32)[:, None] * freqs_F[None, :]
    emb = jnp.concatenate([jnp.cos(args_NF), jnp.sin(args_NF)], axis=-1)
    if dim % 2:
        emb = jnp.concatenate([emb, jnp.zeros_like(emb[:, :1])], axis=-1)
    return emb


class TimestepEmbedder(nn.Module):
    """DiT's timestep embedder: timestep_embedding(t, freq_dim) -> Dense -> SiLU -> Dense.

    Weights are initialised N(0, 0.02) as in DiT's initialize_weights; returns [N, hidden].
    """
    hidden_size: int
    frequency_embedding_size: int = 256
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, t_N: jax.Array) -> jax.Array:
        init = nn.initializers.normal(stddev=0.02)
        freq_NF = timestep_embedding(t_N, self.frequency_embedding_size)
        h = Dense(self.hidden_size, dtype=self.dtype, kernel_init=init, name="fc1")(freq_NF)
        h = nn.silu(h)
        return Dense(self.hidden_size, dtype=self.dtype, kernel_init=init, name="fc2")(h)


def sincos_1d(positions: jax.Array | np.ndarray, dim: int) -> np.ndarray:
    """MAE 1-D sin-cos table [len(positions), dim]: [sin(p w), cos(p w)], w_i = 10000^(-i/(dim/2)).

    Returns a numpy f32 array (a constant, never a parameter). dim must be even.
    """
    if dim % 2:
        raise ValueError(f"sincos_1d needs an even dim, got {dim}")
    omega = np.arange(dim // 2, dtype=np.float64) / (dim / 2.0)
    omega = 1.0 / 10000 ** omega
    pos = np.asarray(positions, dtype=np.float64).reshape(-1)
    out = np.einsum("m,d->md", pos, omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1).astype(np.float32)


def sincos_2d(h: int, w: int, dim: int) -> np.ndarray:
    """MAE / DiT frozen 2-D position table [h*w, dim], row-major over (row, column).

    The first dim/2 channels encode the column (x) coordinate and the last dim/2 the row
    (y) coordinate, exactly as MAE's get_2d_sincos_pos_embed (its meshgrid puts w first),
    so DiT checkpoints see the same table. dim must be divisible by 4.
    """
    if dim % 4:
        raise ValueError(f"sincos_2d needs dim divisible by 4, got {dim}")
    cols, rows = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64))
    emb_x = sincos_1d(cols.reshape(-1), dim // 2)
    emb_y = sincos_1d(rows.reshape(-1), dim // 2)
    return np.concatenate([emb_x, emb_y], axis=1)
