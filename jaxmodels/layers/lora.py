"""LoRA (Hu et al. 2021): a Dense layer with a frozen base weight plus a low-rank update.

  y = x W + b + (alpha / r) * dropout(x) A B        A: [in, r] (Kaiming-uniform), B: [r, out] (0)

B starts at zero, so a fresh adapter leaves the model unchanged. The base weight is either
an f32 "kernel" or, for QLoRA, the NF4 leaves of jaxmodels.layers.quant under "kernel_nf4"
(a dict), de-quantised inside the matmul. With rank > 0 the base is frozen: wrapped in
stop_gradient here (so no weight gradient is even computed) and left out of the optimizer
by the model's `trainable_mask` (only leaves named lora_a / lora_b train).

`LoRADense` has the signature of nn.Dense that SwiGLUMLP's `dense` argument expects:
LoRADense(features, use_bias=..., dtype=..., kernel_init=..., name=...), with the LoRA and
quantisation settings bound by functools.partial.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxmodels.kernels import dispatch
from jaxmodels.layers import quant
from jaxmodels.layers.dense import linear
from jaxmodels.layers.dropout import Dropout

Initializer = Callable[..., jax.Array]
LORA_LEAVES = ("lora_a", "lora_b")
QUANT_KINDS = ("none", "nf4")


def lora_a_init(key, shape, dtype=jnp.float32):
    """Kaiming-uniform with a = sqrt(5) (PyTorch Linear / peft default): U(-1/sqrt(in), 1/sqrt(in))."""
    bound = 1.0 / math.sqrt(shape[0])
    return jax.random.uniform(key, shape, dtype, -bound, bound)


class LoRADense(nn.Module):
    """x[..., in] -> [..., features]; see the module docstring.

    lora_rank: 0 disables the adapter (a plain, trainable Dense unless quantised).
    quant: "none" (f32 base kernel) or "nf4" (4-bit frozen base).
    freeze: stop gradients into the base kernel/bias (always so with rank > 0 or NF4);
      a model with LoRA elsewhere freezes its non-target projections this way.
    deterministic: False applies lora_dropout (needs a "dropout" rng).
    """
    features: int
    use_bias: bool = False
    dtype: Any = jnp.float32
    kernel_init: Initializer = nn.initializers.normal(stddev=0.02)
    bias_init: Initializer = nn.initializers.zeros
    lora_rank: int = 0
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    quant: str = "none"
    freeze: bool = False
    deterministic: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if self.quant not in QUANT_KINDS:
            raise ValueError(f"unknown quant {self.quant!r}; valid: {', '.join(QUANT_KINDS)}")
        shape = (x.shape[-1], self.features)
        frozen = self.freeze or self.lora_rank > 0 or self.quant != "none"
        if self.quant == "nf4":
            q = self.param("kernel_nf4", lambda key: quant.nf4_quantize(self.kernel_init(key, shape, jnp.float32)))
            q = jax.lax.stop_gradient(q)
            y = dispatch.nf4_matmul(x, q, shape, self.dtype)  # config kernels.nf4_matmul
        else:
            kernel = self.param("kernel", self.kernel_init, shape, jnp.float32)
            if frozen:
                kernel = jax.lax.stop_gradient(kernel)
            y = linear(x.astype(self.dtype), kernel.astype(self.dtype))
        if self.use_bias:
            bias = self.param("bias", self.bias_init, (self.features,), jnp.float32)
            if frozen:
                bias = jax.lax.stop_gradient(bias)
            y = y + bias.astype(self.dtype)
        if self.lora_rank > 0:
            a = self.param("lora_a", lora_a_init, (shape[0], self.lora_rank), jnp.float32)
            b = self.param("lora_b", nn.initializers.zeros, (self.lora_rank, self.features), jnp.float32)
            h = Dropout(self.lora_dropout)(x, deterministic=self.deterministic)
            h = linear(h.astype(self.dtype), a.astype(self.dtype))
            h = linear(h, b.astype(self.dtype))
            y = y + h * (self.lora_alpha / self.lora_rank)
        return y


def is_lora_path(path) -> bool:
    """True for a key path (jax.tree_util) that ends in a LoRA leaf."""
    last = path[-1]
    return getattr(last, "key", getattr(last, "name", None)) in LORA_LEAVES


def lora_trainable_mask(params) -> Any:
    """Bool pytree: True exactly on lora_a / lora_b leaves."""
    return jax.tree_util.tree_map_with_path(lambda p, _: is_lora_path(p), params)


def merge_lora(params: Mapping, rank, alpha: Optional[float] = None) -> dict:
    """Folds every adapter into its base kernel: kernel += (alpha/rank) A B; drops A and B.

    rank: the LoRA rank, or a model Config with lora_rank / lora_alpha (alpha then unused).
    Projections without an adapter are left as they are (an NF4 one stays NF4: use
    jaxmodels.convert.llama.base_params for a fully de-quantised f32 tree).

    Works on stacked (scanned, leading layer axis) and plain kernels, on numpy or jax
    arrays. An NF4 base is de-quantised to an f32 "kernel" first (merging into 4 bits
    would lose the adapter), so the result is always a plain f32 model.
    """
    if hasattr(rank, "lora_rank"):
        rank, alpha = rank.lora_rank, rank.lora_alpha
    if alpha is None:
        raise ValueError("merge_lora needs alpha (or a config with lora_rank and lora_alpha)")

    def merge(node):
        if not isinstance(node, Mapping):
            return node
        node = {k: merge(v) for k, v in node.items()}
        if "lora_a" not in node:
            return node
        a, b = node.pop("lora_a"), node.pop("lora_b")
        delta = np.einsum("...ir,...ro->...io", np.asarray(a, np.float32), np.asarray(b, np.float32))
        delta *= alpha / rank
        if "kernel_nf4" in node:
            qleaves = node.pop("kernel_nf4")
            shape = delta.shape[-2:]
            stacked = np.asarray(qleaves["nf4"]).ndim == 2
            if stacked:
                base = np.stack([quant.nf4_dequantize({k: np.asarray(v)[i] for k, v in qleaves.items()},
                                                      shape, np.float32, xp=np)
                                 for i in range(np.asarray(qleaves["nf4"]).shape[0])])
            else:
                base = quant.nf4_dequantize({k: np.asarray(v) for k, v in qleaves.items()},
                                            shape, np.float32, xp=np)
        else:
            base = np.asarray(node.pop("kernel"), np.float32)
        node["kernel"] = base + delta
        return node

    return merge(params)

