"""Per-head group norm: normalise each head's channels separately (RetNet, RWKV-7 ln_x).

Equivalent to torch GroupNorm(num_groups=H) on [.., H·D] / torchscale's per-head RMSNorm.
Statistics in f32; affine params (when used) are one [H·D] vector, as GroupNorm stores them.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

KINDS = ("layer", "rms")


class HeadNorm(nn.Module):
    """x_...HD -> normalised over D per head; kind "layer" (mean+var) or "rms"."""
    kind: str = "layer"
    eps: float = 1e-5
    use_scale: bool = True
    use_bias: bool = True
    dtype: Optional[Any] = None
    scale_init: Callable[..., jax.Array] = nn.initializers.ones

    @nn.compact
    def __call__(self, x_HD: jax.Array) -> jax.Array:
        if self.kind not in KINDS:
            raise ValueError(f"unknown head norm {self.kind!r}; valid: {', '.join(KINDS)}")
        out_dtype = self.dtype or x_HD.dtype
        H, D = x_HD.shape[-2:]
        x32 = x_HD.astype(jnp.float32)
        if self.kind == "layer":
            x32 = x32 - jnp.mean(x32, axis=-1, keepdims=True)
        y = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.eps)
        if self.use_scale:
            y = y * self.param("scale", self.scale_init, (H * D,), jnp.float32).reshape(H, D)
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros, (H * D,), jnp.float32).reshape(H, D)
        return y.astype(out_dtype)
