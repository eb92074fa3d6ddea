"""Instruction-tuning data (Alpaca format) as grain pipelines for the LM task.

Examples are {"instruction", "input" (optional), "output"} records from a JSON list or a
JSONL file (data.path), or the embedded generated set (data.path="", a few dozen offline
arithmetic / reversal / counting instructions, for CPU smoke runs). Each becomes

  [BOS] prompt(instruction, input) output [EOS]

with the Alpaca template (data.template="alpaca") or a compact one ("short", for tiny
byte-level models). Batches follow the text pipeline's layout (jaxmodels/data/text.py):

  inputs   int32   [B, T]   tokens 0 .. T-1
  targets  int32   [B, T]   tokens 1 .. T
  mask     float32 [B, T]   1 only where the target is a response token (or the EOS)

so the loss covers the response alone. data.packing=False pads each example to seq_len
(truncating longer ones); packing=True concatenates examples and cuts seq_len windows:
fewer pad tokens, but attention then crosses example boundaries (the LM contract has no
segment ids), as in Lit-GPT's / HF's simple packing. The split is deterministic: every
10th example validates.
"""
from __future__ import annotations

import json
import os
import random
from typing import Any, Optional, Sequence

import grain
import numpy as np

from jaxmodels.config import ConfigError

TEMPLATES = {
    "alpaca": (
        "Below is an instruction that describes a task, paired with an input that provides further "
        "context. Write a response that appropriately completes the request.\n\n"
        "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n",
        "Below is an instruction that describes a task. Write a response that appropriately "
        "completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n",
    ),
    "short": ("Q: {instruction}\n{input}\nA: ", "Q: {instruction}\nA: "),
}
VAL_EVERY = 10
_LONG = 2 ** 31 - 1


def _get(cfg: Any, key: str, default: Any = None) -> Any:
    return cfg.get(key, default) if hasattr(cfg, "get") else getattr(cfg, key, default)


def prompt_text(example: dict, template: str = "alpaca") -> str:
    """The prompt part of an example (everything before the response)."""
    if template not in TEMPLATES:
        raise ConfigError(f"unknown data.template {template!r}; valid: {', '.join(TEMPLATES)}")
    with_input, without = TEMPLATES[template]
    if example.get("input"):
        return with_input.format(instruction=example["instruction"], input=example["input"])
    return without.format(instruction=example["instruction"])


def read_examples(path: str) -> list[dict]:
    """Alpaca records from a .json (list) or .jsonl file."""
    if not os.path.isfile(path):
        raise ConfigError(f"data.path={path!r}: no such instruction file (Alpaca .json or .jsonl)")
    with open(path, encoding="utf-8") as f:
        if path.endswith(".jsonl"):
            records = [json.loads(line) for line in f if line.strip()]
        else:
            records = json.load(f)
    for i, r in enumerate(records):
        if "conversations" in r or "messages" in r:  # multi-turn (ShareGPT / OpenAI style)
            continue
        if "instruction" not in r or "output" not in r:
            raise ConfigError(f"{path} record {i} lacks 'instruction' or 'output' (has {sorted(r)}), "
                              "or 'conversations' / 'messages' for multi-turn chats")
    return records


def embedded_examples(n: int = 64, seed: int = 0) -> list[dict]:
    """A small generated instruction set (distinct examples): additions, reversals of random
    letter strings, word counting, uppercasing."""
    rng = random.Random(seed)
    words = ["cat", "tree", "moon", "river", "stone", "bird", "lamp", "road", "fish", "cloud"]
    out, seen = [], set()
    i = 0
    while len(out) < n:
        kind = i % 4
        i += 1
        if kind == 0:
            a, b = rng.randint(0, 50), rng.randint(0, 50)
            ex = {"instruction": "Add the two numbers.", "input": f"{a} + {b}", "output": str(a + b)}
        elif kind == 1:
            w = "".join(rng.choice("abcdefghijklmnop") for _ in range(rng.randint(3, 7)))
            ex = {"instruction": "Reverse the word.", "input": w, "output": w[::-1]}
        elif kind == 2:
            k = rng.randint(1, 6)
            seq = " ".join(rng.choice(words) for _ in range(k))
            ex = {"instruction": "How many words are there?", "input": seq, "output": str(k)}
        else:
            w = f"{rng.choice(words)} {rng.choice(words)}"
            ex = {"instruction": f"Write '{w}' in capital letters.", "input": "", "output": w.upper()}
        key = json.dumps(ex, sort_keys=True)
        if key not in seen:
            seen.add(key)
            out.append(ex)
    return out


def special_ids(tokenizer) -> tuple[Optional[int], Optional[int], int]:
    """(bos, eos, pad) ids: BOS/EOS from the tokenizer's vocab when it has them."""
    bos = getattr(tokenizer, "bos", None)
    eos = getattr(tokenizer, "eot", None)
    pad = getattr(tokenizer, "pad", None)
    return bos, eos, 0 if pad is None else pad


def encode_example(example: dict, tokenizer, template: str = "alpaca") -> tuple[np.ndarray, np.ndarray]:
    """(tokens, response_mask) of one example; mask is 1 on response (and EOS) tokens.
    Multi-turn records (ShareGPT "conversations" / "messages") go through the model folder's
    chat template (data/chat.py), with the mask on every assistant reply."""
    bos, eos, _ = special_ids(tokenizer)
    if "conversations" in example or "messages" in example:
        from jaxmodels.data import chat
        template = chat.template_for(tokenizer, getattr(tokenizer, "folder", ""))
        return chat.encode_conversation(chat.sharegpt_messages(example), tokenizer, template, bos)
    prompt = ([bos] if bos is not None else []) + tokenizer.encode(prompt_text(example, template))
    response = tokenizer.encode(example["output"]) + ([eos] if eos is not None else [])
    tokens = np.asarray(prompt + response, np.int32)
    mask = np.concatenate([np.zeros(len(prompt), np.float32), np.ones(len(response), np.float32)])
    return tokens, mask


def padded_rows(encoded: Sequence[tuple[np.ndarray, np.ndarray]], seq_len: int, pad: int) -> dict:
    """One row per example: inputs/targets/mask [N, seq_len] (truncated or padded)."""
    n = len(encoded)
    inputs = np.full((n, seq_len), pad, np.int32)
    targets = np.full((n, seq_len), pad, np.int32)
    mask = np.zeros((n, seq_len), np.float32)
    for i, (tokens, resp) in enumerate(encoded):
        tokens, resp = tokens[: seq_len + 1], resp[: seq_len + 1]
        k = len(tokens) - 1
        inputs[i, :k], targets[i, :k], mask[i, :k] = tokens[:-1], tokens[1:], resp[1:]
    return {"inputs": inputs, "targets": targets, "mask": mask}


def packed_rows(encoded: Sequence[tuple[np.ndarray, np.ndarray]], seq_len: int, pad: int) -> dict:
    """Examples concatenated and cut into windows of seq_len + 1 (the last one padded)."""
    tokens = np.concatenate([t for t, _ in encoded])
    resp = np.concatenate([m for _, m in encoded])
    n = max(1, -(-(len(tokens) - 1) // seq_len))
    total = n * seq_len + 1
    tokens = np.pad(tokens, (0, total - len(tokens)), constant_values=pad)
    resp = np.pad(resp, (0, total - len(resp)))
    idx = np.arange(n)[:, None] * seq_len + np.arange(seq_len + 1)[None, :]
    win, m = tokens[idx], resp[idx]
    return {"inputs": win[:, :-1], "targets": win[:, 1:], "mask": m[:, 1:].astype(np.float32)}


class RowSource:
    """Random access over precomputed rows (grain MapDataset source)."""

    def __init__(self, rows: dict):
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows["inputs"])

    def __getitem__(self, index: int) -> dict:
        return {k: v[index] for k, v in self.rows.items()}


def instruct_rows(data_cfg: Any, split: str, tokenizer) -> dict:
    """The split's rows (numpy) for data.path (or the embedded set)."""
    path = _get(data_cfg, "path", "")
    examples = read_examples(path) if path else embedded_examples(int(_get(data_cfg, "num_examples", 64) or 64))
    if split == "train":
        examples = [e for i, e in enumerate(examples) if i % VAL_EVERY != VAL_EVERY - 1]
    elif split == "val":
        examples = [e for i, e in enumerate(examples) if i % VAL_EVERY == VAL_EVERY - 1]
    else:
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    if not examples:
        raise ConfigError(f"{path or 'the embedded set'} has no {split} examples (need >= {VAL_EVERY} records)")
    template = _get(data_cfg, "template", "alpaca")
    encoded = [encode_example(e, tokenizer, template) for e in examples]
    _, _, pad = special_ids(tokenizer)
    seq_len = int(_get(data_cfg, "seq_len", 512))
    build = packed_rows if _get(data_cfg, "packing", False) else padded_rows
    return build(encoded, seq_len, pad)


def instruct_dataset(data_cfg: Any, split: str, batch_size: int, seed: int, tokenizer) -> grain.IterDataset:
    """Batches of instruction rows; "train" is shuffled (per epoch) and endless, "val" one
    pass (repeated up to one batch if it holds fewer rows)."""
    rows = instruct_rows(data_cfg, split, tokenizer)
    ds = grain.MapDataset.source(RowSource(rows))
    if split == "train":
        ds = ds.shuffle(seed=seed).repeat()
    elif len(ds) < batch_size:
        ds = ds.repeat(-(-batch_size // len(ds)))
    ds = ds.batch(batch_size, drop_remainder=True)
    return ds.to_iter_dataset(grain.ReadOptions(num_threads=int(_get(data_cfg, "num_threads", 2)),
                                                prefetch_buffer_size=int(_get(data_cfg, "prefetch", 8))))


def load_instruct(data_cfg: Any) -> tuple[dict, Any]:
    """({"val": tokens}, tokenizer) for the LM task: the tokenizer named by data.tokenizer
    and, as "val" tokens, the concatenated val examples (the task's sample prompt is their
    start)."""
    from jaxmodels.data.tokenizers import build_tokenizer

    if _get(data_cfg, "tokenizer", "byte") == "char":
        raise ConfigError("data.source='instruct' needs a fixed tokenizer: data.tokenizer='byte' or 'hf'")
    tokenizer = build_tokenizer(data_cfg)
    path = _get(data_cfg, "path", "")
    examples = read_examples(path) if path else embedded_examples(int(_get(data_cfg, "num_examples", 64) or 64))
    val = [e for i, e in enumerate(examples) if i % VAL_EVERY == VAL_EVERY - 1] or examples[:1]
    template = _get(data_cfg, "template", "alpaca")
    tokens = np.concatenate([encode_example(e, tokenizer, template)[0] for e in val])
    return {"val": tokens}, tokenizer


def instruct_data_config(**overrides: Any):
    """An LM `data` section for instruction data: the text fields plus template, packing
    and num_examples (embedded set size)."""
    from jaxmodels.data.text import lm_data_config

    extra = dict(template="alpaca", packing=False, num_examples=64)
    text_fields = {k: v for k, v in overrides.items() if k not in extra}
    c = lm_data_config(**{"source": "instruct", "tokenizer": "byte", **text_fields})
    for key, default in extra.items():
        c[key] = overrides.get(key, default)
    return c
