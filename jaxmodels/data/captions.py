"""Caption embeddings from a frozen T5 or CLIP text encoder, for `launch.encode --captions`.

A caption is tokenized with the encoder folder's own tokenizer (tokenizer.json through the
`tokenizers` library, or a SentencePiece spiece.model for T5 folders without one), cut or
padded to `length` tokens and encoded once, so training reads cached embeddings and the
encoder (4.7B parameters for T5-XXL) never sits beside the diffusion model.

  T5    PixArt-alpha's recipe: 120 tokens, </s> appended, padded with <pad>; the mask marks
        the real tokens and the stored embedding is the final hidden state.
  CLIP  Stable Diffusion's recipe: 77 tokens (the model's positions), start and end tokens,
        padded with the end token; encoded without a mask (SD attends to all 77 states),
        so the stored mask is all True.
"""
from __future__ import annotations

import os
from typing import Callable

import numpy as np

from jaxmodels.config import ConfigError


def _tokenizer(folder: str, kind: str):
    """texts -> list of id lists (special tokens included), and the pad id."""
    path = os.path.join(folder, "tokenizer.json")
    if os.path.isfile(path):
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(path)
        tok.no_padding()
        tok.no_truncation()
        names = ("<pad>",) if kind == "t5" else ("<|endoftext|>", "</s>")
        pad = next((tok.token_to_id(n) for n in names if tok.token_to_id(n) is not None), 0)
        return (lambda texts: [e.ids for e in tok.encode_batch(list(texts))]), pad
    spm = os.path.join(folder, "spiece.model")
    if kind == "t5" and os.path.isfile(spm):
        import sentencepiece

        sp = sentencepiece.SentencePieceProcessor(model_file=spm)
        return (lambda texts: [sp.encode(t) + [sp.eos_id()] for t in texts]), sp.pad_id()
    raise ConfigError(f"{folder} has no tokenizer.json{' or spiece.model' if kind == 't5' else ''}: copy the "
                      "encoder's tokenizer files into the folder")


def caption_encoder(folder: str, length: int = 0, batch_size: int = 32
                    ) -> tuple[Callable[[list[str]], tuple[np.ndarray, np.ndarray]], dict]:
    """(encode(captions) -> (emb f32 [n, length, D], mask bool [n, length]), info) for the T5
    or CLIP folder. length 0: 120 for T5, the position count (77) for CLIP."""
    import jax

    from jaxmodels.convert.text_encoders import load_text_encoder
    from jaxmodels.models.clip import CLIPTextEncoder

    model, params = load_text_encoder(folder)
    kind = "clip" if isinstance(model, CLIPTextEncoder) else "t5"
    if kind == "clip":
        length = length or model.cfg.max_position_embeddings
        if length > model.cfg.max_position_embeddings:
            raise ConfigError(f"--caption-len {length} exceeds CLIP's {model.cfg.max_position_embeddings} positions")
        width = model.cfg.hidden_size
    else:
        length = length or 120
        width = model.cfg.d_model
    tokenize, pad = _tokenizer(folder, kind)

    @jax.jit
    def run(p, tokens, mask):
        if kind == "clip":
            return model.apply({"params": p}, tokens)["hidden"]
        return model.apply({"params": p}, tokens, mask)

    def encode(captions: list[str]) -> tuple[np.ndarray, np.ndarray]:
        n = len(captions)
        tokens = np.full((n, length), pad, np.int32)
        mask = np.zeros((n, length), bool)
        for i, ids in enumerate(tokenize(captions)):
            if len(ids) > length:   # keep the closing special token, as HF's truncation does
                ids = ids[:length - 1] + ids[-1:]
            tokens[i, :len(ids)] = ids
            mask[i, :len(ids)] = True
        out = []
        for start in range(0, n, batch_size):
            t, m = tokens[start:start + batch_size], mask[start:start + batch_size]
            k = len(t)
            if k < batch_size:   # one compiled shape
                t = np.concatenate([t, np.full((batch_size - k, length), pad, np.int32)])
                m = np.concatenate([m, np.zeros((batch_size - k, length), bool)])
            out.append(np.asarray(run(params, t, m))[:k])
        emb = np.concatenate(out).astype(np.float32)
        return emb, (np.ones_like(mask) if kind == "clip" else mask)

    return encode, {"kind": kind, "length": length, "dim": width}
