"""CLIP's text transformer (transformers' CLIPTextModel), Stable Diffusion's caption encoder.

tokens [B, L] -> token + learned position embeddings -> num_layers x [LayerNorm -> causal
multi-head self-attention (q/k/v/out with biases) -> residual; LayerNorm -> fc1 ->
quick_gelu (x * sigmoid(1.702 x)) or gelu -> fc2 -> residual] -> final LayerNorm.
mask [B, L] (True = real token) also hides padded keys. The pooled output is the state at
the first end-of-text token (eos_token_id; the highest token id for checkpoints with the
legacy eos_token_id 2, as transformers does).

apply({"params": p}, tokens_BL, mask_BL) -> {"hidden": [B, L, D] (after the final norm),
"penultimate": [B, L, D] (the second-to-last layer's output, no final norm: SDXL / SD 2's
choice), "pooled": [B, D]}, all f32.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxmodels.config import ConfigError
from jaxmodels.layers.attention import attention_einsum
from jaxmodels.layers.norms import LayerNorm

ACTIVATIONS = ("quick_gelu", "gelu")


@dataclasses.dataclass(frozen=True)
class Config:
    """Names of transformers' CLIPTextConfig."""
    vocab_size: int = 49408
    hidden_size: int = 768
    intermediate_size: int = 3072
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    max_position_embeddings: int = 77
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    eos_token_id: int = 49407
    dtype: str = "float32"


SIZES = {
    # openai/clip-vit-large-patch14's text tower: Stable Diffusion 1.x's encoder (123M).
    "clip-vit-l-14": {},
    "clip-tiny": dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                      num_attention_heads=4, max_position_embeddings=16, eos_token_id=63),
}


class CLIPLayer(nn.Module):
    cfg: Config

    @nn.compact
    def __call__(self, x_BLD: jax.Array, mask: jax.Array) -> jax.Array:
        cfg, dtype = self.cfg, jnp.dtype(self.cfg.dtype)
        B, L, D = x_BLD.shape
        H = cfg.num_attention_heads
        h = LayerNorm(cfg.layer_norm_eps, dtype=dtype, name="norm1")(x_BLD)
        q, k, v = (nn.Dense(D, dtype=dtype, name=n)(h).reshape(B, L, H, D // H) for n in ("q", "k", "v"))
        out = attention_einsum(q, k, v, mask).reshape(B, L, D)
        x_BLD = x_BLD + nn.Dense(D, dtype=dtype, name="out")(out)
        h = LayerNorm(cfg.layer_norm_eps, dtype=dtype, name="norm2")(x_BLD)
        h = nn.Dense(cfg.intermediate_size, dtype=dtype, name="fc1")(h)
        h = h * jax.nn.sigmoid(1.702 * h) if cfg.hidden_act == "quick_gelu" else jax.nn.gelu(h, approximate=False)
        return x_BLD + nn.Dense(D, dtype=dtype, name="fc2")(h)


class CLIPTextEncoder(nn.Module):
    cfg: Config

    @nn.compact
    def __call__(self, tokens_BL: jax.Array, mask_BL: jax.Array | None = None) -> dict:
        cfg, dtype = self.cfg, jnp.dtype(self.cfg.dtype)
        B, L = tokens_BL.shape
        if L > cfg.max_position_embeddings:
            raise ValueError(f"{L} tokens exceed CLIP's {cfg.max_position_embeddings} positions")
        x = nn.Embed(cfg.vocab_size, cfg.hidden_size, dtype=dtype, name="token_embed")(tokens_BL)
        x = x + nn.Embed(cfg.max_position_embeddings, cfg.hidden_size, dtype=dtype, name="pos_embed")(jnp.arange(L))
        causal = jnp.tril(jnp.ones((L, L), bool))
        mask = causal if mask_BL is None else causal[None, None, None] & mask_BL[:, None, None, None, :]
        states = [x]
        for i in range(cfg.num_hidden_layers):
            x = CLIPLayer(cfg, name=f"layer_{i}")(x, mask)
            states.append(x)
        hidden = LayerNorm(cfg.layer_norm_eps, dtype=dtype, name="final_norm")(x).astype(jnp.float32)
        if cfg.eos_token_id == 2:   # legacy configs: the end token has the highest id
            eos_at = jnp.argmax(tokens_BL, axis=-1)
        else:
            eos_at = jnp.argmax((tokens_BL == cfg.eos_token_id).astype(jnp.int32), axis=-1)
        return {"hidden": hidden, "penultimate": states[-2].astype(jnp.float32),
                "pooled": hidden[jnp.arange(B), eos_at]}


def make_config(cfg: Mapping[str, Any]) -> Config:
    from jaxmodels.models import sized_config

    config = sized_config(Config, SIZES, cfg, "clip")
    if config.hidden_act not in ACTIVATIONS:
        raise ConfigError(f"unsupported CLIP hidden_act {config.hidden_act!r}; valid: {', '.join(ACTIVATIONS)}")
    return config


def build(cfg: Mapping[str, Any]) -> CLIPTextEncoder:
    return CLIPTextEncoder(make_config(cfg))
