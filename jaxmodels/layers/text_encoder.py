"""A small trainable transformer over caption bytes: the offline text path for PixArt / U-Net.

Real text-to-image models read frozen T5 / CLIP features (the "precomputed" path: the
dataset stores `text_emb`). With no weights to download, the default path learns its own
text encoder jointly with the backbone from raw UTF-8 bytes: vocab 256 bytes + PAD (256).

Input: tokens int32 [N, L] (bytes, PAD = 256) and mask bool [N, L] (True = real token).
Output: [N, L, width] features (pre-LN transformer, bidirectional attention restricted to
real tokens, fixed sin-cos positions, final LayerNorm). Padded positions carry junk that
every consumer masks out.

`WordTextEncoder` reads the same bytes but hands out one feature per word (a word = a run
of bytes between spaces): each word's bytes, in order, are flattened and projected to one
token, and the transformer runs over words. A caption of 60 bytes becomes ~12 tokens, so
the encoder and every cross-attention are ~5x cheaper, and a word that decides the picture
("triangle") is one key for the image to attend to instead of eight bytes to assemble.
The vocabulary stays open (any UTF-8 word has an embedding); no vocabulary file.
"""
from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxmodels.layers.dense import Dense
from jaxmodels.layers.embeddings import sincos_1d
from jaxmodels.layers.mlp import GeluMLP
from jaxmodels.layers.norms import LayerNorm
from jaxmodels.layers.stack import remat_block, scan_blocks

BYTE_VOCAB = 257  # 256 byte values + PAD
PAD_ID = 256


def encode_bytes(texts, length: int):
    """Host-side helper: captions -> (tokens int32 [N, length], mask bool [N, length]).

    UTF-8 bytes, truncated to `length`, right-padded with PAD_ID.
    """
    import numpy as np

    tokens = np.full((len(texts), length), PAD_ID, np.int32)
    mask = np.zeros((len(texts), length), bool)
    for i, text in enumerate(texts):
        data = np.frombuffer(text.encode("utf-8")[:length], np.uint8)
        tokens[i, :len(data)] = data
        mask[i, :len(data)] = True
    return tokens, mask


class EncoderBlock(nn.Module):
    """Pre-LN transformer block: x + attn(LN(x)) then x + MLP(LN(x)); scan-compatible."""
    num_heads: int
    mlp_ratio: float = 4.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x_BLD: jax.Array, mask_BL: jax.Array):
        from jaxmodels.layers.mha import MultiHeadAttention

        h = LayerNorm(eps=1e-6, dtype=self.dtype, name="ln1")(x_BLD)
        x_BLD = x_BLD + MultiHeadAttention(self.num_heads, dtype=self.dtype, name="attn")(
            h, mask_BS=mask_BL)
        h = LayerNorm(eps=1e-6, dtype=self.dtype, name="ln2")(x_BLD)
        x_BLD = x_BLD + GeluMLP(hidden=int(x_BLD.shape[-1] * self.mlp_ratio), gelu="tanh",
                                dtype=self.dtype, name="mlp")(h)
        return x_BLD, None


def _blocks_and_norm(enc, x: jax.Array, mask_BL: jax.Array) -> jax.Array:
    """`enc.depth` EncoderBlocks (scanned or unrolled) then the final LayerNorm, created
    inside enc's compact __call__ (params "blocks" / "blocks_i" and "ln_f"); shared by the
    byte and word encoders."""
    kwargs = dict(num_heads=enc.num_heads, mlp_ratio=enc.mlp_ratio, dtype=enc.dtype)
    if enc.scan_layers:
        x, _ = scan_blocks(EncoderBlock, enc.depth, enc.remat,
                           in_axes=(nn.broadcast,), name="blocks", **kwargs)(x, mask_BL)
    else:
        block_cls = remat_block(EncoderBlock, enc.remat)
        for i in range(enc.depth):
            x, _ = block_cls(name=f"blocks_{i}", **kwargs)(x, mask_BL)
    return LayerNorm(eps=1e-6, dtype=enc.dtype, name="ln_f")(x)


class TextEncoder(nn.Module):
    """Byte-level caption encoder: tokens [N, L] -> features [N, L, width]."""
    width: int = 256
    depth: int = 4
    num_heads: int = 4
    mlp_ratio: float = 4.0
    dtype: Any = jnp.float32
    remat: str = "none"
    scan_layers: bool = True

    @nn.compact
    def __call__(self, tokens_BL: jax.Array, mask_BL: Optional[jax.Array] = None) -> jax.Array:
        if mask_BL is None:
            mask_BL = tokens_BL != PAD_ID
        L = tokens_BL.shape[1]
        # Unit-scale token embeddings: the sin-cos positions added next have RMS 0.71. With
        # GPT-style N(0, 0.02) tokens the positions drowned them (35x larger) and a jointly
        # trained encoder stayed caption-blind: PixArt's outputs for right and wrong
        # captions differed by 4e-5 after 2000 steps.
        x = nn.Embed(BYTE_VOCAB, self.width, embedding_init=nn.initializers.normal(1.0),
                     name="tok_embed")(tokens_BL)
        x = (x + jnp.asarray(sincos_1d(np.arange(L), self.width))[None]).astype(self.dtype)
        return _blocks_and_norm(self, x, mask_BL)


def word_slots(tokens_BL: jax.Array, mask_BL: jax.Array, max_words: int, max_chars: int):
    """Where each byte goes in a [max_words, max_chars] grid of words.

    Returns (index_BL: word * max_chars + position in word, or -1 for spaces, padding and
    bytes past max_words / max_chars; words_B: number of words, capped at max_words)."""
    sep = (tokens_BL == ord(" ")) | ~mask_BL
    first = jnp.ones_like(sep[:, :1])
    starts = ~sep & jnp.concatenate([first, sep[:, :-1]], axis=1)
    word = jnp.cumsum(starts, axis=1) - 1
    pos = jnp.arange(tokens_BL.shape[1])[None]
    start_pos = jax.lax.cummax(jnp.where(starts, pos, 0), axis=1)
    char = pos - start_pos
    keep = ~sep & (word < max_words) & (char < max_chars)
    index = jnp.where(keep, word * max_chars + char, -1)
    return index, jnp.minimum(starts.sum(axis=1), max_words)


class WordTextEncoder(nn.Module):
    """Byte tokens [N, L] -> word features [N, max_words, width] and their mask [N, max_words].

    A word's embedding is Dense(concat of its first `max_chars` byte embeddings, in order),
    so "ring" and "grin" differ; words then get sin-cos positions and `depth` pre-LN
    transformer blocks (EncoderBlock) over the real words, and a final LayerNorm."""
    max_words: int = 16
    max_chars: int = 12
    width: int = 256
    depth: int = 2
    num_heads: int = 4
    byte_width: int = 32
    mlp_ratio: float = 4.0
    dtype: Any = jnp.float32
    remat: str = "none"
    scan_layers: bool = True

    @nn.compact
    def __call__(self, tokens_BL: jax.Array, mask_BL: Optional[jax.Array] = None):
        if mask_BL is None:
            mask_BL = tokens_BL != PAD_ID
        W, C = self.max_words, self.max_chars
        index_BL, words_B = word_slots(tokens_BL, jnp.asarray(mask_BL, bool), W, C)
        # Unit-scale byte embeddings (as TextEncoder: N(0, 0.02) would drown under the positions).
        bytes_BLE = nn.Embed(BYTE_VOCAB, self.byte_width, embedding_init=nn.initializers.normal(1.0),
                             name="byte_embed")(tokens_BL)
        grid = jnp.einsum("blk,ble->bke", jax.nn.one_hot(index_BL, W * C, dtype=bytes_BLE.dtype), bytes_BLE)
        x = Dense(self.width, dtype=self.dtype, kernel_init=nn.initializers.lecun_normal(),
                  name="word_embed")(grid.reshape(grid.shape[0], W, C * self.byte_width).astype(self.dtype))
        x = (x + jnp.asarray(sincos_1d(np.arange(W), self.width))[None]).astype(self.dtype)
        mask_BW = jnp.arange(W)[None] < words_B[:, None]
        return _blocks_and_norm(self, x, mask_BW), mask_BW
