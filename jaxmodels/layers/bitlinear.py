"""BitLinear (BitNet b1.58): ternary weights, 8-bit activations, straight-through gradients.

The forward of "The Era of 1-bit LLMs" (Ma et al. 2024) and its Training Tips / FAQ code,
which transformers' AutoBitLinear (online mode) also implements:

  weights, per tensor (absmean):  s_w = 1 / max(mean|W|, 1e-5)
                                  W_q = clip(round(W * s_w), -1, 1)        in {-1, 0, +1}
  activations, per token (absmax): s_x = 127 / max(max_j |x_j|, 1e-5)
                                  x_q = clip(round(x * s_x), -128, 127)    8-bit integers
  output:                         y = (x_q @ W_q) / (s_x * s_w)

i.e. y = x~ @ W~ with x~ = x_q / s_x and W~ = W_q / s_w. (The paper writes the weight
rule as RoundClip(W / (gamma + eps)) with gamma = mean|W|; the code clamps gamma at 1e-5
instead of adding eps. They agree whenever mean|W| >> 1e-5; we follow the code, which
the released checkpoints were trained with.)

All quantisation runs in f32 whatever the compute dtype: the integer-valued x_q and W_q
are exact in bf16 (|x_q| <= 128), so the matmul itself runs in the compute dtype with f32
accumulation and the two scales are applied to the f32 result.

Gradients are the straight-through estimator of the FAQ code (x + (q(x) - x).detach()):
the rounding is treated as the identity, so for g = dL/dy
  dL/dx = g @ W~^T        dL/dW = x~^T @ g
(the quantised operands, not the latent ones, appear in each other's gradient). This is a
custom VJP so that the backward keeps only x_q (int8) and one f32 scale per token instead
of an f32 copy of the activations.

Params: `kernel` [in, out] f32 — the latent ("master") weights the optimizer updates.
With quantize=False the layer is a plain full-precision Dense with the same params (the
baseline BitNet is compared against). With packed=True it holds the inference layout
instead: `packed` uint8 [ceil(out/4), in] (four ternary values per byte, the layout of
transformers' BitNet quantizer, see jaxmodels/layers/ternary_pack.py) and `weight_scale`
f32 [] (= 1 / s_w, the dequantisation multiplier), unpacked in XLA inside the matmul.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxmodels.layers.dense import flat_dot_general, linear
from jaxmodels.layers.ternary_pack import unpack_ternary_block

Initializer = Callable[..., jax.Array]

ACT_BITS = 8
ACT_QMAX = 2 ** (ACT_BITS - 1) - 1   # 127: scale so the largest |x| maps to 127
ACT_QMIN = -(2 ** (ACT_BITS - 1))    # -128
SCALE_FLOOR = 1e-5


def weight_quant(w: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per-tensor absmean ternary quantisation: (W_q in {-1, 0, 1} as f32, s_w f32 scalar)."""
    w32 = w.astype(jnp.float32)
    s_w = 1.0 / jnp.maximum(jnp.mean(jnp.abs(w32)), SCALE_FLOOR)
    return jnp.clip(jnp.round(w32 * s_w), -1.0, 1.0), s_w


def act_quant(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per-token (last axis) absmax 8-bit quantisation: (x_q integers as f32, s_x [..., 1])."""
    x32 = x.astype(jnp.float32)
    s_x = ACT_QMAX / jnp.maximum(jnp.max(jnp.abs(x32), axis=-1, keepdims=True), SCALE_FLOOR)
    return jnp.clip(jnp.round(x32 * s_x), ACT_QMIN, ACT_QMAX), s_x


def fake_quant_weight(w: jax.Array) -> jax.Array:
    """W~ = W_q / s_w (f32), with the straight-through gradient (identity)."""
    w_q, s_w = weight_quant(w)
    w32 = w.astype(jnp.float32)
    return w32 + jax.lax.stop_gradient(w_q / s_w - w32)


def fake_quant_act(x: jax.Array) -> jax.Array:
    """x~ = x_q / s_x (f32), with the straight-through gradient (identity)."""
    x_q, s_x = act_quant(x)
    x32 = x.astype(jnp.float32)
    return x32 + jax.lax.stop_gradient(x_q / s_x - x32)


def _int_matmul(x_q, w_q_IO, dtype):
    """x_q @ W_q in `dtype` with f32 accumulation (both operands hold small integers)."""
    return linear(x_q.astype(dtype), w_q_IO.astype(dtype), preferred_element_type=jnp.float32)


def _scaled_out(x, w_IO, dtype, add=None):
    """(y, residuals): y = x_q @ W_q / (s_x * s_w), plus `add` when given.

    `add` (the adapter's output) joins the integer product before the division, as
    (x_q @ W_q + add * s) / s with s = s_x * s_w, so the rescale stays the last operation
    whatever is added. That keeps a zero adapter bit for bit out of the result: XLA turns
    the division into a multiply by 1/s and its backends contract that multiply with an add
    that follows in the same fusion (a residual, RoPE) into one FMA, fma(x_q W_q, 1/s, r).
    Added after the rescale instead, a zero adapter would sit between the multiply and that
    add, splitting the FMA into two roundings (~1 ulp off the model without an adapter).
    """
    x_q, s_x = act_quant(x)
    w_q, s_w = weight_quant(w_IO)
    y = _int_matmul(x_q, w_q, dtype)
    if add is not None:
        y = y + add.astype(jnp.float32) * (s_x * s_w)
    # int8 residuals: 1 byte per activation instead of 4. The zero-size arrays carry the
    # primal dtypes the cotangents must have.
    res = (x_q.astype(jnp.int8), s_x, w_q.astype(jnp.int8), s_w,
           jnp.zeros((0,), x.dtype), jnp.zeros((0,), w_IO.dtype))
    return y / (s_x * s_w), res


def _bitlinear_bwd(dtype, res, g):
    x_q, s_x, w_q, s_w, x_token, w_token = res
    g = g.astype(dtype)
    # dx = g @ W~^T with W~ = W_q / s_w (STE through the activation rounding).
    dx = flat_dot_general(g, w_q.astype(dtype), (((g.ndim - 1,), (1,)), ((), ())),
                          preferred_element_type=jnp.float32) / s_w
    # dW = x~^T @ g with x~ = x_q / s_x (STE through the weight rounding).
    x_deq = (x_q.astype(jnp.float32) / s_x).astype(dtype)
    dw = jnp.dot(x_deq.reshape(-1, x_deq.shape[-1]).T, g.reshape(-1, g.shape[-1]),
                 preferred_element_type=jnp.float32)
    return dx.astype(x_token.dtype), dw.astype(w_token.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _bitlinear(x: jax.Array, w_IO: jax.Array, dtype) -> jax.Array:
    return _scaled_out(x, w_IO, dtype)[0]


_bitlinear.defvjp(_scaled_out, _bitlinear_bwd)  # the forward is the primal plus its residuals


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _bitlinear_plus(x: jax.Array, w_IO: jax.Array, add: jax.Array, dtype) -> jax.Array:
    return _scaled_out(x, w_IO, dtype, add)[0]


def _bitlinear_plus_fwd(x, w_IO, add, dtype):
    y, res = _scaled_out(x, w_IO, dtype, add)
    return y, (res, jnp.zeros((0,), add.dtype))


def _bitlinear_plus_bwd(dtype, res, g):
    res, add_token = res
    # (y + add * s) / s: the derivative in `add` is 1 (s cancels).
    return _bitlinear_bwd(dtype, res, g) + (g.astype(add_token.dtype),)


_bitlinear_plus.defvjp(_bitlinear_plus_fwd, _bitlinear_plus_bwd)


def bitlinear(x: jax.Array, w_IO: jax.Array, dtype=jnp.float32, add: Optional[jax.Array] = None) -> jax.Array:
    """y = quant(x) @ quant(W) (+ add) with straight-through gradients; f32 out. w_IO: [in, out].

    add: [..., out], summed in before the output rescale (see _scaled_out: a zero `add`
    then gives the result without it bit for bit, in any fusion); its gradient is g.
    """
    if add is None:
        return _bitlinear(x, w_IO, jnp.dtype(dtype))
    return _bitlinear_plus(x, w_IO, add, jnp.dtype(dtype))


@jax.custom_jvp
def _round_clip_ste(x: jax.Array) -> jax.Array:
    """clip(round(x)) to the 8-bit range, whose derivative is the identity (the straight-through
    estimator; also at the clip bound, which the token's absmax element sits on)."""
    return jnp.clip(jnp.round(x), ACT_QMIN, ACT_QMAX)


_round_clip_ste.defjvp(lambda primals, tangents: (_round_clip_ste(primals[0]), tangents[0]))


def act_quant_ste(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """act_quant's values, differentiable as bitlinear's backward treats them: rounding as the
    identity and the scale s_x a constant, so d(x_q / s_x)/dx = 1."""
    x32 = x.astype(jnp.float32)
    s_x = jax.lax.stop_gradient(ACT_QMAX / jnp.maximum(jnp.max(jnp.abs(x32), axis=-1, keepdims=True),
                                                       SCALE_FLOOR))
    return _round_clip_ste(x32 * s_x), s_x


def packed_bitlinear(x: jax.Array, packed_PI: jax.Array, weight_scale: jax.Array, out_features: int,
                     dtype=jnp.float32, add: Optional[jax.Array] = None) -> jax.Array:
    """Inference from packed weights: y = (x_q @ W_q^T) * weight_scale / s_x (+ add), f32 out.

    packed_PI: uint8 [ceil(out/4), in] in transformers' layout. Bit pair i of byte row j is
    output feature i*r + j (r = ceil(out/4)), so the matmul runs as four [r, in] blocks, each
    unpacked in XLA right before its dot (shift, mask, convert: fusible into the dot's
    operand read) and the four outputs concatenated, so no unpacked copy of the whole
    matrix is needed. Differentiable in x with the straight-through gradient of the latent
    layer (dx = g W~^T), so LoRA adapters before a packed layer train (model.adapters).
    add: as in `bitlinear`, summed in before the rescale (a zero `add` changes no bit).
    """
    x_q, s_x = act_quant_ste(x)
    x_q = x_q.astype(dtype)
    outs = []
    for i in range(4):
        w_RI = unpack_ternary_block(packed_PI, i, dtype)
        outs.append(flat_dot_general(x_q, w_RI, (((x.ndim - 1,), (1,)), ((), ())),
                                     preferred_element_type=jnp.float32))
    y = jnp.concatenate(outs, axis=-1)[..., :out_features]
    rescale = weight_scale.astype(jnp.float32) / s_x
    if add is not None:
        y = y + add.astype(jnp.float32) * (s_x / weight_scale.astype(jnp.float32))
    return y * rescale


class BitLinear(nn.Module):
    """A bias-free linear layer that is BitLinear (b1.58) when quantize=True.

    quantize=False: y = x @ W in `dtype` (the full-precision baseline, same params).
    packed=True: inference from `packed` + `weight_scale` (see the module docstring).
    The RMSNorm BitLinear needs in front is the caller's (BitNet's input / sub norms).
    """
    features: int
    quantize: bool = True
    packed: bool = False
    dtype: Any = jnp.float32
    kernel_init: Initializer = nn.initializers.normal(0.02)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        from jaxmodels.layers import adapters

        spec = adapters.current()
        path = "/".join(str(p) for p in self.scope.path)
        if spec is not None and spec.nf4_on(path):
            from jaxmodels.config import ConfigError
            raise ConfigError("BitNet's base is ternary already: drop model.adapters.quant=nf4 (LoRA over "
                              "the packed 2-bit base: --config.model.packed=True)")
        dtype = jnp.dtype(self.dtype)
        weights = self._weights(x.shape[-1])
        add = None
        if spec is not None and spec.lora_on(path):
            # LoRA beside the quantised layer, in full precision (the base stays ternary):
            # y + (alpha / r) x A B, B = 0 at init. The base sums it in before its output
            # rescale (see _scaled_out: so a fresh adapter changes no bit of the output).
            from jaxmodels.layers.lora import lora_a_init

            a = self.param("lora_a", lora_a_init, (x.shape[-1], spec.rank), jnp.float32)
            b = self.param("lora_b", nn.initializers.zeros, (spec.rank, self.features), jnp.float32)
            add = linear(linear(x.astype(dtype), a.astype(dtype)), b.astype(dtype)) * jnp.asarray(spec.scale, dtype)
        return self._apply(x, weights, add).astype(dtype)

    def _weights(self, in_features: int) -> tuple:
        if self.packed:
            rows = -(-self.features // 4)
            return (self.param("packed", nn.initializers.zeros, (rows, in_features), jnp.uint8),
                    self.param("weight_scale", nn.initializers.ones, (), jnp.float32))
        return (self.param("kernel", self.kernel_init, (in_features, self.features), jnp.float32),)

    def _apply(self, x: jax.Array, weights: tuple, add: Optional[jax.Array]) -> jax.Array:
        dtype = jnp.dtype(self.dtype)
        if self.packed:
            return packed_bitlinear(x, *weights, self.features, dtype, add)
        if self.quantize:
            return bitlinear(x, weights[0], dtype, add)
        y = linear(x.astype(dtype), weights[0].astype(dtype)).astype(dtype)
        return y if add is None else y + add
