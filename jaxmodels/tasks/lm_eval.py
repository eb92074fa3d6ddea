"""Evaluating causal LMs of any family: perplexity on a token file, and multiple-choice
accuracy on HellaSwag-format JSONL (llm.c's dev/data/hellaswag.py scoring).

Only the model contract is used: `model.apply({"params": p}, tokens_BT) -> logits [B, T, V]`.

Perplexity: the tokens are cut into consecutive windows of seq_len + 1 (each predicts seq_len
tokens; the last one shorter), and ppl = exp(mean next-token cross-entropy over every token
after the first).

HellaSwag: each line {"ctx": str, "endings": [str, ...], "label": int}. As in llm.c, each
candidate row is ctx tokens + tokens of " " + ending; the model's cross-entropy over the
ending's tokens is summed (`acc`: lowest sum wins) and averaged (`acc_norm`: lowest mean
wins, the number llm.c reports). Rows are padded at the end, which a causal model never sees.
"""
from __future__ import annotations

import functools
import json
import math
import os
from typing import Any, Iterable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from jaxmodels.config import ConfigError

BUCKET = 32  # rows are padded to a multiple of this: few distinct shapes, few compilations


@functools.lru_cache(maxsize=16)
def _nll_fn(model):
    """jit: (params, tokens [B, T], targets [B, T]) -> per-token cross-entropy [B, T] in f32."""

    def nll(params, tokens_BT, targets_BT):
        out = model.apply({"params": params}, tokens_BT)
        logits_BTV = (out[0] if isinstance(out, tuple) else out).astype(jnp.float32)
        logz_BT = jax.nn.logsumexp(logits_BTV, axis=-1)
        picked_BT = jnp.take_along_axis(logits_BTV, targets_BT[..., None], axis=-1)[..., 0]
        return logz_BT - picked_BT

    return jax.jit(nll)


def token_nll(model, params, rows: list[list[int]]) -> list[np.ndarray]:
    """Per-row next-token cross-entropy: row r's [len(r) - 1] losses (one batch, padded)."""
    width = max(len(r) for r in rows) - 1
    width = -(-width // BUCKET) * BUCKET
    tokens = np.zeros((len(rows), width), np.int32)
    targets = np.zeros((len(rows), width), np.int32)
    for i, r in enumerate(rows):
        tokens[i, :len(r) - 1], targets[i, :len(r) - 1] = r[:-1], r[1:]
    nll = np.asarray(_nll_fn(model)(params, jnp.asarray(tokens), jnp.asarray(targets)))
    return [nll[i, :len(r) - 1] for i, r in enumerate(rows)]


def perplexity(model, params, tokens: np.ndarray, seq_len: int, batch_size: int = 8,
               max_tokens: int = 0) -> dict:
    """{"loss": mean nats/token, "ppl", "tokens": tokens scored} over consecutive windows."""
    n = len(tokens) if not max_tokens else min(len(tokens), max_tokens + 1)
    if n < 2:
        raise ConfigError(f"perplexity needs at least 2 tokens, the file has {len(tokens)}")
    starts = list(range(0, n - 1, seq_len))
    total, count = 0.0, 0
    for b in range(0, len(starts), batch_size):
        rows = [np.asarray(tokens[s:min(s + seq_len + 1, n)], np.int64).tolist() for s in starts[b:b + batch_size]]
        for losses in token_nll(model, params, rows):
            total += float(losses.sum(dtype=np.float64))
            count += len(losses)
    loss = total / count
    return {"loss": loss, "ppl": math.exp(loss), "tokens": count}


def read_hellaswag(path: str) -> list[dict]:
    if not os.path.isfile(path):
        raise ConfigError(f"no HellaSwag file at {path!r} (JSONL lines with ctx, endings, label)")
    out = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            ex = json.loads(line)
            missing = [k for k in ("ctx", "endings", "label") if k not in ex]
            if missing:
                raise ConfigError(f"{path}:{n} lacks {missing} (HellaSwag lines: ctx, endings, label)")
            out.append(ex)
    return out


def score_example(model, params, tokenizer, example: dict, max_len: int = 0) -> dict:
    """{"sum": [...], "mean": [...]} completion losses of each ending (llm.c's rendering)."""
    ctx = tokenizer.encode(example["ctx"])
    bos = getattr(tokenizer, "bos", None)
    if bos is not None:
        ctx = [bos] + ctx
    rows, lengths = [], []
    for ending in example["endings"]:
        end = tokenizer.encode(" " + ending)
        row = ctx + end
        if max_len and len(row) > max_len:  # keep the ending whole, drop the context's start
            row = row[len(row) - max_len:]
        rows.append(row)
        lengths.append(len(end))
    losses = token_nll(model, params, rows)
    sums = [float(l[-k:].sum()) for l, k in zip(losses, lengths)]
    return {"sum": sums, "mean": [s / k for s, k in zip(sums, lengths)]}


def hellaswag(model, params, tokenizer, examples: Iterable[dict], max_len: int = 0,
              limit: int = 0) -> dict:
    """{"acc", "acc_norm", "examples"} over the examples (the first `limit` when > 0)."""
    n = correct = correct_norm = 0
    for ex in examples:
        if limit and n >= limit:
            break
        s = score_example(model, params, tokenizer, ex, max_len)
        label = int(ex["label"])
        correct += int(np.argmin(s["sum"]) == label)
        correct_norm += int(np.argmin(s["mean"]) == label)
        n += 1
    if not n:
        raise ConfigError("no HellaSwag examples to score")
    return {"acc": correct / n, "acc_norm": correct_norm / n, "examples": n}


def context_length(model, default: int = 1024) -> int:
    """The model's maximum sequence length when its config names one."""
    cfg = getattr(model, "cfg", None)
    for key in ("block_size", "max_seq_len", "max_position_embeddings", "seq_len"):
        v = getattr(cfg, key, None)
        if isinstance(v, int) and v > 0:
            return v
    return default
