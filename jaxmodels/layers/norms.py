"""Normalisation layers shared by every family: LayerNorm (GPT-2, DiT) and RMSNorm (LLaMA, Mamba).

Statistics are always computed in f32 whatever the activation dtype (bf16 means/variances
over thousands of channels lose several bits); the result is cast back to `dtype` (default:
the input's dtype). Params are f32 and named "scale" / "bias" like flax.linen.LayerNorm.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

Initializer = Callable[..., jax.Array]


def _fused() -> bool:
    """Whether config kernels.norm picked a fused norm (kernels/dispatch.py): the Pallas kernel,
    or the C++ custom call on a CPU (dispatch.norm keeps the jnp ops where it does not apply)."""
    from jaxmodels.kernels import dispatch
    return dispatch.choice("norm") in ("pallas", "cpu")


class LayerNorm(nn.Module):
    """y = (x - mean) / sqrt(var + eps) * scale + bias over the last axis.

    eps: 1e-5 as in GPT-2/nanoGPT. use_bias=False gives nanoGPT's `bias=False` LayerNorm.
    use_scale=False (and use_bias=False) gives the parameter-free norm DiT modulates.
    """
    eps: float = 1e-5
    use_bias: bool = True
    use_scale: bool = True
    dtype: Optional[Any] = None
    scale_init: Initializer = nn.initializers.ones
    bias_init: Initializer = nn.initializers.zeros

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        out_dtype = self.dtype or x.dtype
        features = x.shape[-1]
        if _fused():  # config kernels.norm=pallas|cpu: jaxmodels/kernels/norms.py / cpu_norm.py, same math
            from jaxmodels.kernels import dispatch
            scale = self.param("scale", self.scale_init, (features,), jnp.float32) if self.use_scale else None
            bias = self.param("bias", self.bias_init, (features,), jnp.float32) if self.use_bias else None
            return dispatch.norm(x, scale, bias, kind="layer", eps=self.eps, dtype=out_dtype)
        x32 = x.astype(jnp.float32)
        mean = jnp.mean(x32, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
        y = (x32 - mean) * jax.lax.rsqrt(var + self.eps)
        if self.use_scale:
            y = y * self.param("scale", self.scale_init, (features,), jnp.float32)
        if self.use_bias:
            y = y + self.param("bias", self.bias_init, (features,), jnp.float32)
        return y.astype(out_dtype)


class RMSNorm(nn.Module):
    """y = x / sqrt(mean(x^2) + eps) * scale over the last axis (LLaMA, Mamba, RWKV-7).

    eps: 1e-6 (LLaMA-2 uses 1e-5, Mamba 1e-5; pass the checkpoint's value).
    scale_init: ones by default; Gemma-style "1 + w" norms pass zeros and add 1 themselves.
    """
    eps: float = 1e-6
    dtype: Optional[Any] = None
    scale_init: Initializer = nn.initializers.ones

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        out_dtype = self.dtype or x.dtype
        if _fused():
            from jaxmodels.kernels import dispatch
            scale = self.param("scale", self.scale_init, (x.shape[-1],), jnp.float32)
            return dispatch.norm(x, scale, kind="rms", eps=self.eps, dtype=out_dtype)
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.eps)
        y = y * self.param("scale", self.scale_init, (x.shape[-1],), jnp.float32)
        return y.astype(out_dtype)
