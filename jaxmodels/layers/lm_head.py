"""The LM head every causal family ends with, and the "head input" form the training loss uses.

`lm_head(x, weight_VC, dtype)` is the usual projection to f32 logits (tied or untied, with an
optional bias and an optional Gemma-style soft-cap `c * tanh(z / c)`). With
`head_input=True` it returns a `HeadInput` instead: the final hidden states plus the head's
weight, bias and soft-cap, untouched. The LM task asks for that form when training, so that
jaxmodels.kernels.cross_entropy can compute the loss over vocabulary chunks without ever
holding the [tokens, vocab] logits (GPT-2 124M at 8 x 1024 tokens: 1.6 GB of f32 logits
and as much again for their gradient).

A family supports it by taking `head_input: bool = False` in its __call__ and passing it
here; `head_logits(h)` turns a HeadInput back into the same logits `lm_head` would return.
"""
from __future__ import annotations

from typing import Any, Optional

import flax.struct
import jax
import jax.numpy as jnp

from jaxmodels.layers.dense import project_out


@flax.struct.dataclass
class HeadInput:
    hidden: jax.Array                 # [..., C] final hidden states (after the final norm)
    weight_VC: jax.Array              # head weight, one row per vocabulary entry
    bias_V: Optional[jax.Array] = None
    softcap: float = flax.struct.field(pytree_node=False, default=0.0)   # 0: none
    dtype: Any = flax.struct.field(pytree_node=False, default=jnp.float32)  # matmul dtype


def head_logits(h: HeadInput) -> jax.Array:
    """f32 logits [..., V] of a HeadInput: (hidden @ weight^T + bias), soft-capped if set."""
    logits = project_out(h.hidden, h.weight_VC, h.dtype)
    if h.bias_V is not None:
        logits = logits + h.bias_V.astype(jnp.float32)
    if h.softcap:
        logits = h.softcap * jnp.tanh(logits / h.softcap)
    return logits


def lm_head(x: jax.Array, weight_VC: jax.Array, dtype, *, bias_V: Optional[jax.Array] = None,
            softcap: float = 0.0, head_input: bool = False):
    """f32 logits of x [..., C] through the head weight [V, C]; a HeadInput if head_input."""
    h = HeadInput(x, weight_VC, bias_V, float(softcap), jnp.dtype(dtype))
    return h if head_input else head_logits(h)
