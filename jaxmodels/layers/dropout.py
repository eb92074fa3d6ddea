"""Dropout with a counter-based hash mask instead of a threefry stream per element.

Why: jax.random.bernoulli runs threefry-2x32 for every element. On XLA:CPU that costs
~8 ns per element, more than everything else the element goes through: for nanoGPT's
shakespeare_char model (dropout 0.2 on the attention probabilities and on three residual
branches per layer) it was ~2 s of an 8.6 s train step. Here the key is drawn once per call
(two 32-bit words from threefry) and each element's bit comes from an integer hash of its
flat index mixed with those words: a few multiplies and shifts that XLA fuses into the
consumer, 7x cheaper than bernoulli for a [64, 6, 256, 256] mask (34 vs 227 ms, this CPU).

The hash is Chris Wellons' "lowbias32" finaliser applied twice (index ^ word0, then + word1).
Different keys give independent-looking masks and the keep rate is exact to 2^-32;
tests/layers/test_dropout.py checks the rate, independence across keys and neighbours, and
determinism. Flat indices wrap modulo 2^32, so a single mask over more than 4G elements
would repeat; nothing here comes close.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp


def _mix32(h: jax.Array) -> jax.Array:
    h = h ^ (h >> 16)
    h = h * jnp.uint32(0x7FEB352D)
    h = h ^ (h >> 15)
    h = h * jnp.uint32(0x846CA68B)
    return h ^ (h >> 16)


def _flat_index(shape: tuple[int, ...]) -> jax.Array:
    """uint32 row-major index of every element of `shape` (wraps at 2^32)."""
    idx = jnp.zeros(shape, jnp.uint32)
    stride = 1
    for axis in reversed(range(len(shape))):
        idx = idx + jax.lax.broadcasted_iota(jnp.uint32, shape, axis) * jnp.uint32(stride % 2**32)
        stride *= shape[axis]
    return idx


def keep_mask(rng: jax.Array, shape: tuple[int, ...], keep_prob: float) -> jax.Array:
    """Boolean mask, True with probability keep_prob independently per element."""
    if not 0.0 <= keep_prob <= 1.0:
        raise ValueError(f"keep_prob must be in [0, 1], got {keep_prob}")
    if keep_prob == 1.0:
        return jnp.ones(shape, bool)
    words = jax.random.bits(rng, (2,), jnp.uint32)
    h = _mix32(_flat_index(tuple(shape)) ^ words[0])
    h = _mix32(h + words[1])
    return h < jnp.uint32(int(keep_prob * 2**32))


def dropout(x: jax.Array, rate: float, rng: jax.Array) -> jax.Array:
    """Inverted dropout: zero each element with probability `rate`, scale the rest by 1/(1-rate)."""
    if rate <= 0.0:
        return x
    if rate >= 1.0:
        return jnp.zeros_like(x)
    keep = keep_mask(rng, x.shape, 1.0 - rate)
    return jnp.where(keep, x / jnp.asarray(1.0 - rate, x.dtype), jnp.zeros((), x.dtype))


class Dropout(nn.Module):
    """Drop-in for nn.Dropout (same call, same "dropout" rng stream) using `keep_mask`."""
    rate: float
    rng_collection: str = "dropout"

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool = True) -> jax.Array:
        if deterministic or self.rate == 0.0:
            return x
        return dropout(x, self.rate, self.make_rng(self.rng_collection))
