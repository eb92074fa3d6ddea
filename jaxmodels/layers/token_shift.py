"""RWKV's token shift: each position sees the previous position's input (x_{t-1}).

Used by RWKV-4 and RWKV-7. During decoding the "previous input" of the first new token is
carried in the recurrent state, so one function serves training, prefill and steps.
"""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp


def token_shift(x_BTC: jax.Array, prev_BC: Optional[jax.Array] = None) -> tuple[jax.Array, jax.Array]:
    """Returns (x shifted right by one along time, the last input x_BT[:, -1]).

    prev_BC: the input just before x_BTC[:, 0] (decoding); None means zeros (sequence start).
    """
    first_B1C = (jnp.zeros_like(x_BTC[:, :1]) if prev_BC is None
                 else prev_BC[:, None].astype(x_BTC.dtype))
    shifted_BTC = jnp.concatenate([first_B1C, x_BTC[:, :-1]], axis=1)
    return shifted_BTC, x_BTC[:, -1]


def lerp(x: jax.Array, shifted: jax.Array, mix: jax.Array) -> jax.Array:
    """x·mix + shifted·(1 - mix): RWKV-4's time_mix interpolation (mix in f32, cast to x)."""
    mix = mix.astype(x.dtype)
    return x * mix + shifted * (1 - mix)
