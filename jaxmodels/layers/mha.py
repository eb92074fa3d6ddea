"""Multi-head self- or cross-attention (DiT, PixArt, the U-Net and the caption encoder)."""
from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxmodels.config import ConfigError
from jaxmodels.layers.attention import attention, attention_einsum
from jaxmodels.layers.dense import Dense

XAVIER = nn.initializers.xavier_uniform()
ZEROS = nn.initializers.zeros


class MultiHeadAttention(nn.Module):
    """Multi-head self- or cross-attention built on jaxmodels.layers.attention.

    Self-attention (context_BSE None): one fused qkv Dense, as DiT / timm. Cross-attention:
    q from x, k/v from the context (PixArt's q_linear / kv_linear). mask_BS (True = key
    visible) restricts the keys, e.g. to real caption tokens. out_init: the output
    projection's init (zeros for PixArt's cross-attention and the U-Net's attention).
    """
    num_heads: int
    dtype: Any = jnp.float32
    kernel_init: Any = XAVIER
    out_init: Any = XAVIER

    @nn.compact
    def __call__(self, x_BTD: jax.Array, context_BSE: Optional[jax.Array] = None,
                 mask_BS: Optional[jax.Array] = None) -> jax.Array:
        B, T, D = x_BTD.shape
        H = self.num_heads
        if D % H:
            raise ConfigError(f"width {D} is not divisible by num_heads {H}")
        dense = lambda n, name: Dense(n, dtype=self.dtype, kernel_init=self.kernel_init,  # noqa: E731
                                      bias_init=ZEROS, name=name)
        if context_BSE is None:
            qkv = dense(3 * D, "qkv")(x_BTD).reshape(B, T, 3, H, D // H)
            q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        else:
            S = context_BSE.shape[1]
            q = dense(D, "q")(x_BTD).reshape(B, T, H, D // H)
            kv = dense(2 * D, "kv")(context_BSE.astype(self.dtype)).reshape(B, S, 2, H, D // H)
            k, v = kv[:, :, 0], kv[:, :, 1]
        if mask_BS is None:
            out_BTHD = attention(q, k, v, causal=False)
        else:
            # A per-example key mask: attention() takes only positional masks, so use its
            # explicit einsum path, whose mask broadcasts against logits [B, K, G, T, S].
            out_BTHD = attention_einsum(q, k, v, mask_BS[:, None, None, None, :])
        return Dense(D, dtype=self.dtype, kernel_init=self.out_init, bias_init=ZEROS,
                     name="proj")(out_BTHD.reshape(B, T, D))
