"""Stochastic rounding f32 -> bf16, for parameters stored in bf16 (optim.param_dtype).

A bf16 weight keeps 8 bits of mantissa: near 1.0 its step is 2^-7 = 0.0078, so an Adam
update of lr x ~1 = 1e-4 rounds back to the same weight every time and training stalls.
Rounding up with probability equal to the distance from the lower bf16 neighbour (in units
of the step) makes the stored weight right on average, E[round(x)] = x, so many small
updates add up as they would in f32 (Gupta et al. 2015, "Deep Learning with Limited
Numerical Precision"; Zamirai et al. 2020 for bf16 training).

bf16 is the top 16 bits of an f32. Adding a uniform integer in [0, 2^16) to the f32 bits and
dropping the low 16 carries into the kept bits with exactly that probability; on the
sign-magnitude layout this rounds the magnitude, so it is unbiased for both signs.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def stochastic_round(x: jax.Array, key: jax.Array, dtype=jnp.bfloat16) -> jax.Array:
    """x (any float) -> `dtype` (bf16), rounded up or down at random, unbiased."""
    if jnp.dtype(dtype) != jnp.dtype(jnp.bfloat16):
        raise ValueError(f"stochastic_round rounds to bfloat16, not {jnp.dtype(dtype).name}")
    bits = jax.lax.bitcast_convert_type(x.astype(jnp.float32), jnp.uint32)
    noise = jax.random.bits(key, x.shape, jnp.uint32) >> 16
    kept = (bits + noise) & jnp.uint32(0xFFFF0000)
    return jax.lax.bitcast_convert_type(kept, jnp.float32).astype(jnp.bfloat16)
