"""Dense layers whose matmuls see 2-D operands: x[..., in] is flattened to [N, in] first.

Why: XLA:CPU (jax 0.10) handles the gradient of a 3-D dot_general badly. For
x[B, T, in] @ W[in, out] the weight gradient contracts over both B and T; XLA canonicalises
that dot by transposing the incoming gradient [B, T, out] to [out, B*T], and fuses the
transpose into whatever elementwise op produced it (GELU's backward, a LayerNorm's backward).
A transposing loop fusion is not vectorised, so GPT's GELU backward alone took 28% of the
CPU train step. With the leading axes flattened first, the weight gradient is a plain
[N, in]^T @ [N, out] that the CPU dot reads in place: the MLP's forward + backward drops from
5.9 ms to 2.0 ms (12x64 tokens, 128 wide), and on GPU the reshape is free (a bitcast).

`Dense` is flax's nn.Dense with that dot: same parameters ("kernel" [in, out], "bias"),
same init, same dtype handling, so checkpoints and converters see no difference.
`linear(x, w)` is the same matmul for layers that hold their own weight (LoRA, NF4).

Adapters: while a family traces with a `model.adapters` spec (jaxmodels/layers/adapters.py),
a Dense whose module path the spec selects becomes a LoRA / QLoRA dense (`_adapted`):
the same math as jaxmodels.layers.lora.LoRADense, chosen by name instead of by the family.
"""
from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp


def flat_dot_general(lhs: jax.Array, rhs: jax.Array, dimension_numbers, precision=None,
                     preferred_element_type=None, **kwargs) -> jax.Array:
    """lax.dot_general, with lhs's leading axes merged when it contracts only its last axis."""
    (lhs_contract, rhs_contract), (lhs_batch, rhs_batch) = dimension_numbers
    if lhs.ndim > 2 and not lhs_batch and not rhs_batch and tuple(lhs_contract) == (lhs.ndim - 1,):
        lead = lhs.shape[:-1]
        out = jax.lax.dot_general(lhs.reshape(-1, lhs.shape[-1]), rhs,
                                  (((1,), tuple(rhs_contract)), ((), ())), precision=precision,
                                  preferred_element_type=preferred_element_type, **kwargs)
        return out.reshape(*lead, *out.shape[1:])
    return jax.lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                               preferred_element_type=preferred_element_type, **kwargs)


def linear(x_NI: jax.Array, w_IO: jax.Array, preferred_element_type: Optional[Any] = None) -> jax.Array:
    """x[..., in] @ w[in, out] through flat_dot_general."""
    return flat_dot_general(x_NI, w_IO, (((x_NI.ndim - 1,), (0,)), ((), ())),
                            preferred_element_type=preferred_element_type)


class Dense(nn.Dense):
    """nn.Dense (same params, init and dtypes) whose matmul flattens the leading axes."""
    dot_general: Any = flat_dot_general

    @nn.compact
    def __call__(self, inputs: jax.Array) -> jax.Array:
        from jaxmodels.layers import adapters

        spec = adapters.current()
        if spec is not None:
            path = "/".join(str(p) for p in self.scope.path)
            if spec.lora_on(path) or spec.nf4_on(path) or spec.base_dtype != "float32":
                return self._adapted(inputs, spec, path)
        return super().__call__(inputs)

    def _adapted(self, x: jax.Array, spec, path: str) -> jax.Array:
        """The frozen base (f32 / bf16 "kernel" or NF4 "kernel_nf4") plus, on LoRA targets,
        (alpha / r) x A B with B = 0 at init. Gradients never reach the base: the trainer
        differentiates only the leaves of the trainable mask."""
        from flax.linen.dtypes import promote_dtype

        from jaxmodels.kernels import dispatch
        from jaxmodels.layers import quant
        from jaxmodels.layers.lora import lora_a_init

        shape = (x.shape[-1], self.features)
        nf4 = spec.nf4_on(path)
        # Kernel before bias, as nn.Dense: flax draws init keys in creation order, so a fresh
        # adapter model holds the same base weights as the plain model with the same seed.
        if nf4:
            kernel = self.param("kernel_nf4", lambda k: quant.nf4_quantize(self.kernel_init(k, shape, jnp.float32)))
        else:
            kernel = self.param("kernel", lambda k: self.kernel_init(k, shape, self.param_dtype)
                                .astype(spec.storage_dtype))
        bias = None
        if self.use_bias:
            bias = self.param("bias", lambda k: self.bias_init(k, (self.features,), self.param_dtype)
                              .astype(spec.storage_dtype))
        if nf4:
            dtype = self.dtype or jnp.result_type(x.dtype, self.param_dtype)
            x, bias = promote_dtype(x, bias, dtype=dtype)
            y = dispatch.nf4_matmul(x, kernel, shape, dtype)  # config kernels.nf4_matmul
        else:
            x, kernel, bias = promote_dtype(x, kernel, bias, dtype=self.dtype)
            y = flat_dot_general(x, kernel, (((x.ndim - 1,), (0,)), ((), ())), precision=self.precision)
        if bias is not None:
            y += jnp.reshape(bias, (1,) * (y.ndim - 1) + (-1,))
        if spec.lora_on(path):
            a = self.param("lora_a", lora_a_init, (shape[0], spec.rank), jnp.float32)
            b = self.param("lora_b", nn.initializers.zeros, (spec.rank, self.features), jnp.float32)
            h = linear(linear(x.astype(y.dtype), a.astype(y.dtype)), b.astype(y.dtype))
            y = y + h * jnp.asarray(spec.scale, y.dtype)
        return y


def project_out(x_NC: jax.Array, table_VC: jax.Array, dtype=jnp.float32) -> jax.Array:
    """x[..., C] @ table[V, C]^T accumulated in f32: a tied LM head over an embedding table."""
    return flat_dot_general(x_NC.astype(dtype), table_VC.astype(dtype),
                            (((x_NC.ndim - 1,), (1,)), ((), ())),
                            preferred_element_type=jnp.float32)
