"""Convolutional building blocks shared by the U-Net and the VAE (NHWC).

group_norm / conv follow PyTorch's defaults (the reference U-Nets and Stable Diffusion's
VAE are PyTorch models); ResBlock is the GroupNorm -> SiLU -> conv residual block of both
(with an optional timestep embedding, which the VAE does not have); AttnBlock is the
spatial self-attention block (+ optional cross-attention to caption tokens).
"""
from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxmodels.layers.dense import Dense
from jaxmodels.layers.dropout import Dropout
from jaxmodels.layers.mha import MultiHeadAttention
from jaxmodels.layers.norms import LayerNorm

ZEROS = nn.initializers.zeros
# PyTorch's default conv/linear init (kaiming_uniform with a = sqrt(5)), as the reference models.
TORCH_INIT = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def group_norm(channels: int, dtype, name: str, groups: int = 32, eps: float = 1e-5) -> nn.GroupNorm:
    """GroupNorm with `groups` groups (halved until it divides `channels`, for narrow test
    models); statistics in f32."""
    while channels % groups:
        groups //= 2
    return nn.GroupNorm(num_groups=groups, epsilon=eps, dtype=dtype, name=name)


def conv(features: int, dtype, name: str, kernel: int = 3, stride: int = 1, zero: bool = False,
         padding: Any = None) -> nn.Conv:
    """A kernel x kernel conv with PyTorch's "same" padding (kernel // 2) unless `padding` is given."""
    pad = kernel // 2
    return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                   padding=((pad, pad), (pad, pad)) if padding is None else padding,
                   dtype=dtype, kernel_init=ZEROS if zero else TORCH_INIT, name=name)


class ResBlock(nn.Module):
    """GroupNorm -> SiLU -> conv3x3 [-> + timestep embedding] -> GroupNorm -> SiLU -> dropout
    -> conv3x3, plus a 1x1 conv skip when channels change.

    With an embedding it is added after the first conv, or applied as "scale-shift norm"
    (GN(h) * (1 + scale) + shift, iDDPM). emb_NE=None (the VAE) has no embedding layer.
    """
    out_channels: int
    dropout: float = 0.0
    use_scale_shift_norm: bool = True
    deterministic: bool = True
    groups: int = 32
    eps: float = 1e-5
    zero_out: bool = True    # zero-init the last conv (diffusion); the VAE uses the default init
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x_NHWC: jax.Array, emb_NE: Optional[jax.Array] = None) -> jax.Array:
        C = self.out_channels
        norm = lambda ch, name: group_norm(ch, self.dtype, name, self.groups, self.eps)  # noqa: E731
        h = conv(C, self.dtype, "in_conv")(nn.silu(norm(x_NHWC.shape[-1], "in_norm")(x_NHWC)))
        if emb_NE is None:
            h = norm(C, "out_norm")(h)
        else:
            emb = Dense(2 * C if self.use_scale_shift_norm else C, dtype=self.dtype,
                        kernel_init=TORCH_INIT, name="emb")(nn.silu(emb_NE))[:, None, None, :]
            if self.use_scale_shift_norm:
                scale, shift = emb[..., :C], emb[..., C:]
                h = norm(C, "out_norm")(h) * (1.0 + scale) + shift
            else:
                h = norm(C, "out_norm")(h + emb)
        h = Dropout(self.dropout)(nn.silu(h), deterministic=self.deterministic)
        h = conv(C, self.dtype, "out_conv", zero=self.zero_out)(h)
        skip = x_NHWC if x_NHWC.shape[-1] == C else conv(C, self.dtype, "skip", kernel=1)(x_NHWC)
        return skip + h


class AttnBlock(nn.Module):
    """Spatial self-attention (+ cross-attention to captions when y is given), residual."""
    num_heads: int
    groups: int = 32
    eps: float = 1e-5
    zero_out: bool = True    # zero-init the output projections (diffusion)
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x_NHWC: jax.Array, y: Optional[jax.Array] = None,
                 y_mask: Optional[jax.Array] = None) -> jax.Array:
        N, H, W, C = x_NHWC.shape
        out_init = ZEROS if self.zero_out else TORCH_INIT
        h = group_norm(C, self.dtype, "norm", self.groups, self.eps)(x_NHWC).reshape(N, H * W, C)
        x = x_NHWC.reshape(N, H * W, C) + MultiHeadAttention(
            self.num_heads, dtype=self.dtype, kernel_init=TORCH_INIT, out_init=out_init, name="attn")(h)
        if y is not None:
            h = LayerNorm(eps=1e-5, dtype=self.dtype, name="cross_norm")(x)
            x = x + MultiHeadAttention(self.num_heads, dtype=self.dtype, kernel_init=TORCH_INIT,
                                       out_init=out_init, name="cross_attn")(h, context_BSE=y, mask_BS=y_mask)
        return x.reshape(N, H, W, C)
