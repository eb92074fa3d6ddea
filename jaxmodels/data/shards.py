"""Token shard files: writing them (launch.prepare) and reading a folder of them as one array.

Two on-disk formats, both read by `sources.read_token_file`:
  llmc     llm.c's: a 256 x int32 header (magic 20240520, version, token count, then zeros),
           then the tokens; version 1 = uint16 tokens, version 2 = uint32 (vocab > 65,536,
           as llm.c writes LLaMA-3 shards)
  nanogpt  nanoGPT's prepare.py output: the uint16 tokens and nothing else

Folder layout (llm.c's FineWeb): `<prefix>_val_000000.bin`, `<prefix>_train_000001.bin`, ...
"""
from __future__ import annotations

import glob
import os
import re
from typing import Sequence

import numpy as np

from jaxmodels.config import ConfigError
from jaxmodels.data.sources import LLMC_MAGIC, read_token_file

FORMATS = ("llmc", "nanogpt")
HEADER_INTS = 256
_SHARD = re.compile(r".*_(train|val)_(\d+)\.bin$")


def token_dtype(vocab_size: int, fmt: str) -> np.dtype:
    if vocab_size <= 2 ** 16:
        return np.dtype(np.uint16)
    if fmt == "nanogpt":
        raise ConfigError(f"vocab of {vocab_size} tokens does not fit nanoGPT's uint16 .bin; "
                          "use --format llmc (uint32 tokens, header version 2)")
    return np.dtype(np.uint32)


class ShardWriter:
    """One shard, streamed: header placeholder, appended tokens, header filled on close.
    Written under a .tmp name and renamed on close, so a killed run leaves no half shard."""

    def __init__(self, path: str, fmt: str, dtype: np.dtype):
        if fmt not in FORMATS:
            raise ConfigError(f"unknown shard format {fmt!r}; valid: {', '.join(FORMATS)}")
        self.path, self.fmt, self.dtype, self.count = path, fmt, dtype, 0
        self.tmp = path + ".tmp"
        self.f = open(self.tmp, "wb")
        if fmt == "llmc":
            self.f.write(np.zeros(HEADER_INTS, np.int32).tobytes())

    def write(self, tokens: np.ndarray) -> None:
        self.f.write(np.ascontiguousarray(tokens, self.dtype).tobytes())
        self.count += len(tokens)

    def close(self) -> None:
        if self.fmt == "llmc":
            header = np.zeros(HEADER_INTS, np.int32)
            header[:3] = (LLMC_MAGIC, 1 if self.dtype == np.uint16 else 2, self.count)
            self.f.seek(0)
            self.f.write(header.tobytes())
        self.f.flush()
        os.fsync(self.f.fileno())
        self.f.close()
        os.replace(self.tmp, self.path)


def shard_files(folder: str, split: str) -> list[str]:
    """The folder's shards of one split ("train" / "val"), in shard-number order."""
    found = [(int(m.group(2)), p) for p in glob.glob(os.path.join(folder, "*.bin"))
             if (m := _SHARD.match(os.path.basename(p))) and m.group(1) == split]
    return [p for _, p in sorted(found)]


class ConcatTokens:
    """Several token memmaps read as one 1-D array (len and slicing), without copying them."""

    def __init__(self, parts: Sequence[np.ndarray]):
        self.parts = [p for p in parts if len(p)]
        self.starts = np.cumsum([0] + [len(p) for p in self.parts])
        self.dtype = self.parts[0].dtype if self.parts else np.dtype(np.uint16)

    def __len__(self) -> int:
        return int(self.starts[-1])

    @property
    def size(self) -> int:
        return len(self)

    def __getitem__(self, key):
        if isinstance(key, (int, np.integer)):
            key = int(key) + (len(self) if key < 0 else 0)
            return self[key:key + 1][0]
        start, stop, step = key.indices(len(self))
        if step != 1:
            raise ValueError("ConcatTokens slices must have step 1")
        out, pos = [], start
        while pos < stop:
            i = int(np.searchsorted(self.starts, pos, side="right")) - 1
            end = min(stop, int(self.starts[i + 1]))
            out.append(np.asarray(self.parts[i][pos - self.starts[i]:end - self.starts[i]]))
            pos = end
        return np.concatenate(out) if out else np.zeros(0, self.dtype)

    def __array__(self, dtype=None, copy=None):
        a = self[:]
        return a.astype(dtype) if dtype is not None else a


def read_shard_folder(folder: str) -> dict:
    """{"train": tokens, "val": tokens} of an llm.c-style shard folder (ConcatTokens views)."""
    splits = {s: shard_files(folder, s) for s in ("train", "val")}
    missing = [s for s, files in splits.items() if not files]
    if missing:
        raise ConfigError(f"{folder!r} has no *_{missing[0]}_NNNNNN.bin shards (launch.prepare writes "
                          "<prefix>_val_000000.bin and <prefix>_train_000001.bin ...)")
    return {s: ConcatTokens([read_token_file(p) for p in files]) for s, files in splits.items()}
