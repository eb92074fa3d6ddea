"""xPos-style rotation of queries and keys (RetNet, torchscale's `theta_shift`).

Pairs of channels (0,1), (2,3), ... are rotated by angle n·θ_i at absolute position n, with
θ_i = 10000^(-i/(D/2-1)) (torchscale: `1 / 10000 ** linspace(0, 1, D // 2)`). Then
q_n·k_m depends on n - m only. The xPos length-extrapolation scale (ζ_i^{n/scale_base}
on queries, its inverse on keys) is optional: RetNet's per-head decay γ already plays that
role, and torchscale's RetNet leaves it out (scale_base=0 here).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def xpos_angles(head_dim: int) -> jax.Array:
    """θ per channel [head_dim]: each pair (2i, 2i+1) shares θ_i."""
    half = head_dim // 2
    theta = 1.0 / (10000.0 ** jnp.linspace(0.0, 1.0, half))
    return jnp.repeat(theta, 2)


def rotate_every_two(x: jax.Array) -> jax.Array:
    """(x0, x1, x2, x3, ...) -> (-x1, x0, -x3, x2, ...)."""
    x1, x2 = x[..., ::2], x[..., 1::2]
    return jnp.stack([-x2, x1], axis=-1).reshape(x.shape)


def xpos_rotate(x_BTHD: jax.Array, pos_T: jax.Array, *, scale_base: float = 0.0,
                inverse_scale: bool = False) -> jax.Array:
    """Rotates x_BTHD at absolute positions pos_T (int [T]); computes in f32, returns x's dtype.

    scale_base > 0 adds xPos' per-channel scale ζ^{n/scale_base} (ζ^{-n/scale_base} when
    inverse_scale, which is what keys get).
    """
    D = x_BTHD.shape[-1]
    angle_TD = pos_T.astype(jnp.float32)[:, None] * xpos_angles(D)[None]
    x32 = x_BTHD.astype(jnp.float32)
    sin_T1D = jnp.sin(angle_TD)[:, None]
    cos_T1D = jnp.cos(angle_TD)[:, None]
    if scale_base > 0:
        zeta_D = jnp.repeat((jnp.arange(0, D, 2) + 0.4 * D) / (1.4 * D), 2)
        power_TD = pos_T.astype(jnp.float32)[:, None] / scale_base * (-1.0 if inverse_scale else 1.0)
        scale_T1D = (zeta_D[None] ** power_TD)[:, None]
        sin_T1D, cos_T1D = sin_T1D * scale_T1D, cos_T1D * scale_T1D
    return (x32 * cos_T1D + rotate_every_two(x32) * sin_T1D).astype(x_BTHD.dtype)
