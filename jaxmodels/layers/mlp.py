"""Feed-forward blocks: the GELU MLP (GPT-2, DiT) and the SwiGLU MLP (LLaMA, Mistral, Qwen).

Params f32, compute in `dtype`. `dense` is the Dense class to use, so LoRA or quantised
layers (jaxmodels.layers.lora / quant) can be swapped in without a second MLP; it is called
as dense(features, use_bias=..., dtype=..., kernel_init=..., name=...).
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxmodels.layers.dense import Dense
from jaxmodels.layers.dropout import Dropout

Initializer = Callable[..., jax.Array]
DEFAULT_INIT = nn.initializers.normal(stddev=0.02)

GELU_KINDS = ("exact", "tanh")


def gelu(x: jax.Array, kind: str) -> jax.Array:
    """GELU: "exact" (erf; PyTorch nn.GELU(), nanoGPT) or "tanh" (HF gpt2's gelu_new, minGPT).

    The tanh form is jax.nn.gelu's. The exact form (`_gelu_exact`) is written out, forward and
    backward. Forward: PyTorch's formula 0.5 x (1 + erf(x / sqrt 2)), computed in f32;
    jax.nn.gelu's 0.5 x erfc(-x / sqrt 2) expands on XLA:CPU into erfc's two-branch polynomial
    with an exp and ran 2x slower for the same values to ~5e-7 (1.5M elements: 0.93 ms against
    0.47 ms on the Intel Xeon dev VM). Backward: JAX's own derivative split, in nanoGPT
    6/6/384's compiled train step, into five XLA:CPU loop fusions over the [tokens, 4d] hidden
    tensor (erf twice, exp, two products); the written-out derivative Phi(x) + x phi(x) is one
    pass reading x and the incoming gradient (measured 0.97x of the step, BENCHMARKS.md).
    tests/layers/test_mlp_gelu.py checks both against float64 and JAX's. The tanh form keeps
    JAX's derivative (a written-out one measured no faster on DiT-S/2: 1.01x).
    """
    if kind not in GELU_KINDS:
        raise ValueError(f"unknown gelu {kind!r}; valid: {', '.join(GELU_KINDS)}")
    if kind == "tanh":
        return jax.nn.gelu(x, approximate=True)
    return _gelu_exact(x)


_SQRT_HALF = 0.7071067811865476      # 1 / sqrt(2)
_INV_SQRT_2PI = 0.3989422804014327   # 1 / sqrt(2 pi)


@jax.custom_vjp
def _gelu_exact(x: jax.Array) -> jax.Array:
    x32 = x.astype(jnp.float32)
    return (0.5 * x32 * (1.0 + jax.lax.erf(x32 * _SQRT_HALF))).astype(x.dtype)


def _gelu_exact_fwd(x):
    return _gelu_exact(x), x


def _gelu_exact_bwd(x, g):
    """g * d gelu/dx = g * (Phi(x) + x phi(x)), computed in f32 (x may be bf16)."""
    x32 = x.astype(jnp.float32)
    d = 0.5 * (1.0 + jax.lax.erf(x32 * _SQRT_HALF)) + x32 * _INV_SQRT_2PI * jnp.exp(-0.5 * x32 * x32)
    return ((g.astype(jnp.float32) * d).astype(g.dtype),)


_gelu_exact.defvjp(_gelu_exact_fwd, _gelu_exact_bwd)


class GeluMLP(nn.Module):
    """x -> fc (d -> hidden) -> GELU -> proj (hidden -> d) -> dropout.

    hidden: defaults to 4 * d. proj_init: GPT-2 scales the residual projection's init by
    1/sqrt(2 * n_layer); pass that initializer here.
    """
    hidden: Optional[int] = None
    use_bias: bool = True
    gelu: str = "tanh"
    dropout: float = 0.0
    dtype: Any = jnp.float32
    kernel_init: Initializer = DEFAULT_INIT
    proj_init: Optional[Initializer] = None
    dense: Callable[..., nn.Module] = Dense

    @nn.compact
    def __call__(self, x_BTD: jax.Array, deterministic: bool = True) -> jax.Array:
        d = x_BTD.shape[-1]
        hidden = self.hidden or 4 * d
        h_BTF = self.dense(hidden, use_bias=self.use_bias, dtype=self.dtype,
                           kernel_init=self.kernel_init, name="fc")(x_BTD)
        h_BTF = gelu(h_BTF, self.gelu)
        y_BTD = self.dense(d, use_bias=self.use_bias, dtype=self.dtype,
                           kernel_init=self.proj_init or self.kernel_init, name="proj")(h_BTF)
        return Dropout(self.dropout)(y_BTD, deterministic=deterministic)


class SwiGLUMLP(nn.Module):
    """LLaMA's feed-forward: down_proj(silu(gate_proj(x)) * up_proj(x)), no biases by default.

    hidden: the intermediate size (LLaMA-7B: 11008). down_init: the down projection's
    initializer (defaults to kernel_init).
    """
    hidden: int
    use_bias: bool = False
    dtype: Any = jnp.float32
    kernel_init: Initializer = DEFAULT_INIT
    down_init: Optional[Initializer] = None
    dense: Callable[..., nn.Module] = Dense

    @nn.compact
    def __call__(self, x_BTD: jax.Array) -> jax.Array:
        d = x_BTD.shape[-1]
        gate_BTF = self.dense(self.hidden, use_bias=self.use_bias, dtype=self.dtype,
                              kernel_init=self.kernel_init, name="gate_proj")(x_BTD)
        up_BTF = self.dense(self.hidden, use_bias=self.use_bias, dtype=self.dtype,
                            kernel_init=self.kernel_init, name="up_proj")(x_BTD)
        return self.dense(d, use_bias=self.use_bias, dtype=self.dtype,
                          kernel_init=self.down_init or self.kernel_init,
                          name="down_proj")(nn.silu(gate_BTF) * up_BTF)
