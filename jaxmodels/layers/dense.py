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

bf16 on a CPU (`bf16_matmul`): XLA:CPU runs a bf16 x bf16 -> bf16 dot by converting both
operands to f32 (slower than f32 throughout), but hands bf16 x bf16 -> f32 to its matmul
library, which uses the CPU's bf16 units (AMX on recent Intel Xeons: 4-5x the f32 rate on
the 2-core dev VM). JAX's autodiff would feed the backward dots an f32 gradient (the
cotangent of an f32 result), which falls back to f32 again, so the bf16 path carries its
own VJP: the gradient is rounded to bf16 and both backward dots take bf16 operands with
f32 accumulation, as mixed precision does on a GPU. Config `kernels.matmul="bf16"` sends
f32 models' dense matmuls the same way (operands rounded to bf16, everything else f32).
Its output is named "bf16_dot" so the dot-saving remat policies (jaxmodels.layers.stack)
keep it as they keep a plain dot. Only on the CPU backend: on a GPU, XLA already runs bf16
dots on the tensor cores.

f32 on an Intel CPU (`jaxmodels.kernels.cpu_matmul`): config `kernels.matmul="cpu"` ("auto"
there, when MKL is installed) sends f32 dense matmuls to MKL's sgemm through a C++ custom call,
1.15x XLA:CPU's own f32 dot on the transformer shapes (BENCHMARKS.md, "CPU speed per machine
type"); its output is named "cpu_dot" for the remat policies, as above.

Adapters: while a family traces with a `model.adapters` spec (jaxmodels/layers/adapters.py),
a Dense whose module path the spec selects becomes a LoRA / QLoRA dense (`_adapted`):
the same math as jaxmodels.layers.lora.LoRADense, chosen by name instead of by the family.
"""
from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

# The checkpoint name of bf16_matmul's output (saved by the dot-saving remat policies).
BF16_DOT_NAME = "bf16_dot"
_NN = (((1,), (0,)), ((), ()))   # x[N, I] @ w[I, O]
_NT = (((1,), (1,)), ((), ()))   # g[N, O] @ w[I, O]^T
_TN = (((0,), (0,)), ((), ()))   # x[N, I]^T @ g[N, O]


@jax.custom_vjp
def bf16_matmul(x_NI: jax.Array, w_IO: jax.Array) -> jax.Array:
    """bf16 x[N, I] @ bf16 w[I, O] accumulated and returned in f32, with bf16 backward dots."""
    return jax.lax.dot_general(x_NI, w_IO, _NN, preferred_element_type=jnp.float32)


def _bf16_matmul_fwd(x_NI, w_IO):
    return bf16_matmul(x_NI, w_IO), (x_NI, w_IO)


def _bf16_matmul_bwd(res, g_NO):
    x_NI, w_IO = res
    g_NO = g_NO.astype(jnp.bfloat16)
    dx_NI = jax.lax.dot_general(g_NO, w_IO, _NT, preferred_element_type=jnp.float32)
    dw_IO = jax.lax.dot_general(x_NI, g_NO, _TN, preferred_element_type=jnp.float32)
    return dx_NI.astype(x_NI.dtype), dw_IO.astype(w_IO.dtype)


bf16_matmul.defvjp(_bf16_matmul_fwd, _bf16_matmul_bwd)


def _cpu_bf16(lhs: jax.Array, rhs: jax.Array) -> bool:
    """Whether this dot runs as bf16_matmul: on a CPU, for bf16 operands, or for f32 operands
    when config kernels.matmul="bf16" asks to round them (as torch.autocast does on a CPU)."""
    if jax.default_backend() != "cpu":
        return False
    if lhs.dtype == rhs.dtype == jnp.bfloat16:
        return True
    from jaxmodels.kernels import dispatch
    return lhs.dtype == rhs.dtype == jnp.float32 and dispatch.choice("matmul") == "bf16"


def _cpu_mkl(lhs: jax.Array, rhs: jax.Array, preferred_element_type) -> bool:
    """Whether this dot runs as jaxmodels.kernels.cpu_matmul (MKL's sgemm as a custom call):
    on a CPU, f32 operands and result, nothing empty, config kernels.matmul "cpu" ("auto" with
    MKL)."""
    if jax.default_backend() != "cpu" or not lhs.dtype == rhs.dtype == jnp.float32:
        return False
    if preferred_element_type not in (None, jnp.float32) or 0 in lhs.shape + rhs.shape:
        return False
    from jaxmodels.kernels import dispatch
    return dispatch.choice("matmul") == "cpu"


def flat_dot_general(lhs: jax.Array, rhs: jax.Array, dimension_numbers, precision=None,
                     preferred_element_type=None, **kwargs) -> jax.Array:
    """lax.dot_general, with lhs's leading axes merged when it contracts only its last axis."""
    (lhs_contract, rhs_contract), (lhs_batch, rhs_batch) = dimension_numbers
    if lhs.ndim >= 2 and not lhs_batch and not rhs_batch and tuple(lhs_contract) == (lhs.ndim - 1,):
        lead = lhs.shape[:-1]
        x_NI = lhs.reshape(-1, lhs.shape[-1])
        w_IO = lambda: rhs if tuple(rhs_contract) == (0,) else rhs.T  # noqa: E731 (XLA folds it)
        if rhs.ndim == 2 and _cpu_bf16(lhs, rhs):
            out = bf16_matmul(x_NI.astype(jnp.bfloat16), w_IO().astype(jnp.bfloat16))
            out = checkpoint_name(out, BF16_DOT_NAME)
            out = out.astype(preferred_element_type or lhs.dtype)
        elif rhs.ndim == 2 and _cpu_mkl(lhs, rhs, preferred_element_type):
            from jaxmodels.kernels.cpu_matmul import cpu_matmul
            out = cpu_matmul(x_NI, w_IO())
        else:
            out = jax.lax.dot_general(x_NI, rhs, (((1,), tuple(rhs_contract)), ((), ())),
                                      precision=precision,
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
