"""Conditioning blocks shared by the diffusion backbones (DiT/PixArt, U-Net): caption
embedding with a learned null caption, and the classifier-free-guidance drop mask."""
from __future__ import annotations

from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxmodels.config import ConfigError
from jaxmodels.layers.dense import Dense
from jaxmodels.layers.text_encoder import PAD_ID, TextEncoder, WordTextEncoder

# bytes: one token per byte; words: the same bytes, one token per word; precomputed: T5 / CLIP states.
TEXT_ENCODERS = ("bytes", "words", "precomputed")
# What a diffusion backbone is conditioned on (beside the timestep).
CONDITIONINGS = ("class", "text", "none")


def check_conditioning(family: str, conditioning: str, text_encoder: str) -> None:
    """A one-line ConfigError naming the valid values, for a backbone config's conditioning
    and text_encoder fields (family: "dit", "unet", for the message)."""
    if conditioning not in CONDITIONINGS:
        raise ConfigError(f"unknown {family} conditioning {conditioning!r}; valid: {', '.join(CONDITIONINGS)}")
    if text_encoder not in TEXT_ENCODERS:
        raise ConfigError(f"unknown {family} text_encoder {text_encoder!r}; valid: {', '.join(TEXT_ENCODERS)}")


class CaptionEmbedder(nn.Module):
    """Caption features -> [N, L, out_dim] tokens for cross-attention (PixArt, U-Net).

    Reads cond["text_tokens"] through the byte TextEncoder ("bytes"), the WordTextEncoder
    ("words": text_len is then the number of word tokens) or cond["text_emb"] as given
    ("precomputed"), replaces dropped captions (drop_N) by a learned null
    embedding [text_len, E] with every token visible, then projects with PixArt's
    Dense -> GELU(tanh) -> Dense. Returns (y_NLD, mask_NL).
    """
    text_encoder: str
    text_len: int
    out_dim: int
    encoder_width: int = 256
    encoder_depth: int = 4
    encoder_heads: int = 4
    remat: str = "none"
    scan_layers: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, cond: Mapping[str, jax.Array], drop_N: jax.Array):
        if self.text_encoder in ("bytes", "words"):
            if "text_tokens" not in cond:
                raise ValueError(f"text conditioning with text_encoder={self.text_encoder!r} needs cond['text_tokens']")
            tokens = cond["text_tokens"]
            mask = cond.get("text_mask", tokens != PAD_ID)
        if self.text_encoder == "words":
            feats, mask = WordTextEncoder(max_words=self.text_len, width=self.encoder_width,
                                          depth=self.encoder_depth, num_heads=self.encoder_heads,
                                          dtype=self.dtype, remat=self.remat, scan_layers=self.scan_layers,
                                          name="text_encoder")(tokens, mask)
        elif self.text_encoder == "bytes":
            feats = TextEncoder(width=self.encoder_width, depth=self.encoder_depth,
                                num_heads=self.encoder_heads, dtype=self.dtype, remat=self.remat,
                                scan_layers=self.scan_layers, name="text_encoder")(tokens, mask)
        elif self.text_encoder == "precomputed":
            if "text_emb" not in cond:
                raise ValueError("text conditioning with text_encoder='precomputed' needs cond['text_emb']")
            feats = cond["text_emb"]
            mask = cond.get("text_mask", jnp.ones(feats.shape[:2], bool))
        else:
            raise ConfigError(f"unknown text_encoder {self.text_encoder!r}; valid: {', '.join(TEXT_ENCODERS)}")
        N, L, E = feats.shape
        if L > self.text_len:
            raise ValueError(f"captions have {L} tokens > text_len {self.text_len}")
        null_LE = self.param("y_null", nn.initializers.normal(E ** -0.5), (self.text_len, E))[:L]
        feats = jnp.where(drop_N[:, None, None], null_LE[None].astype(feats.dtype), feats)
        mask = jnp.where(drop_N[:, None], True, jnp.asarray(mask, bool))
        # LeCun-normal (unit-gain) projections: the caption tokens reach cross-attention at
        # ~unit scale. With PixArt's N(0, 0.02) here they arrived at RMS ~0.03 from our
        # LayerNorm'ed byte-encoder features and a short run barely used them.
        init = nn.initializers.lecun_normal()
        h = Dense(self.out_dim, dtype=self.dtype, kernel_init=init, name="fc1")(feats.astype(self.dtype))
        h = nn.gelu(h, approximate=True)
        y = Dense(self.out_dim, dtype=self.dtype, kernel_init=init, name="fc2")(h)
        return y, mask


def drop_mask(module: nn.Module, cond: Mapping[str, jax.Array], N: int, rate: float,
              train: bool) -> jax.Array:
    """bool[N]: cond["drop"] (forced null condition) OR, when training, Bernoulli(rate)
    drawn from the module's "dropout" rng (classifier-free guidance training)."""
    drop = jnp.asarray(cond["drop"], bool) if "drop" in cond else jnp.zeros((N,), bool)
    if train and rate > 0:
        drop = drop | jax.random.bernoulli(module.make_rng("dropout"), rate, (N,))
    return drop
