"""grain pipelines for language modelling: corpus -> tokens (cached) -> 90/10 split -> random
windows -> batches. Also the minGPT sort task (data/sort.py) behind the same interface.

Batches are dicts of numpy arrays:
  inputs   int32   [B, T]   tokens t .. t+T-1
  targets  int32   [B, T]   tokens t+1 .. t+T
  mask     float32 [B, T]   1 where the target counts in the loss

Like nanoGPT, training examples are windows of seq_len+1 tokens at random offsets. Here
example i's offset is a hash of (seed, i), so the dataset is a grain MapDataset indexed by
example number: the iterator state is just a position, and a restored run resumes at the
exact next batch.
"""
from __future__ import annotations

import json
import os
from typing import Any, Optional

import grain
import ml_collections
import numpy as np

from jaxmodels.config import ConfigError
from jaxmodels.data.sort import SortSource
from jaxmodels.data.sources import corpus_fingerprint, read_documents, read_token_file, short_hash
from jaxmodels.data.tokenizers import CharTokenizer, build_tokenizer

TRAIN_FRACTION = 0.9  # nanoGPT: the first 90% of the tokens train, the last 10% validate
_LONG = 2 ** 31 - 1   # examples in an "endless" MapDataset (random windows never run out)


def lm_data_config(**overrides: Any) -> ml_collections.ConfigDict:
    """The `data` section of an LM config with every field present (so each can be
    overridden on the command line). Pass the fields that differ."""
    c = dict(
        source="embedded",   # "file" | "embedded" | "tfds" | "tokens" | "sort"
        path="",             # file: a text file or folder; tokens: a .bin/.npy, a folder
                             # holding train.bin + val.bin, or a folder of launch.prepare /
                             # llm.c shards (*_val_000000.bin, *_train_000001.bin, ...)
        path_help="",        # added to the error when data.path is missing (where to get it)
        tokenizer="byte",    # "char" | "byte" | "gpt2" | "hf" | "sentencepiece"
        vocab_path="",       # gpt2: vocab.json + merges.txt folder; hf: tokenizer.json; sentencepiece: tokenizer.model
        vocab="",            # char: fixed characters (default: the corpus's own)
        seq_len=256,         # tokens per example (sort: derived from sort_length)
        max_bytes=2_000_000,  # cap on the corpus read (embedded / folders / tfds); 0: no cap
        cache_dir="",        # token cache; default $JAXMODELS_CACHE or ~/.cache/jaxmodels/tokens
        tfds_name="",
        tfds_split="train",
        tfds_text_key="text",
        tfds_data_dir="",
        sort_length=6,       # sort: digits per sequence
        sort_digits=3,       # sort: digits drawn from 0 .. sort_digits-1
        num_threads=2,       # grain read threads
        prefetch=8,          # grain prefetch buffer (batches)
    )
    unknown = sorted(set(overrides) - set(c))
    if unknown:
        raise ConfigError(f"unknown data field(s) {unknown}; valid: {', '.join(sorted(c))}")
    c.update(overrides)
    return ml_collections.ConfigDict(c)


def _get(cfg: Any, key: str, default: Any = None) -> Any:
    return cfg.get(key, default) if hasattr(cfg, "get") else getattr(cfg, key, default)


def seq_len_of(data_cfg: Any) -> int:
    """Tokens per example the model sees (sort: 2*length-1)."""
    if _get(data_cfg, "source") == "sort":
        return 2 * _get(data_cfg, "sort_length", 6) - 1
    return int(_get(data_cfg, "seq_len", 256))


# --------------------------------------------------------------------------- token cache

def _cache_dir(data_cfg: Any) -> str:
    d = _get(data_cfg, "cache_dir", "") or os.environ.get("JAXMODELS_CACHE", "")
    return d or os.path.join(os.path.expanduser("~"), ".cache", "jaxmodels", "tokens")


def _tokenizer_fingerprint(data_cfg: Any) -> str:
    kind = _get(data_cfg, "tokenizer", "char")
    parts = [kind, _get(data_cfg, "vocab", "")]
    vocab_path = _get(data_cfg, "vocab_path", "")
    if kind in ("gpt2", "hf", "sentencepiece") and vocab_path:
        folder = vocab_path if os.path.isdir(vocab_path) else os.path.dirname(vocab_path)
        for name in ("vocab.json", "merges.txt", "tokenizer.json", "tokenizer.model"):
            p = os.path.join(folder, name)
            if os.path.isfile(p):
                st = os.stat(p)
                parts.append(f"{os.path.abspath(p)}|{st.st_size}|{st.st_mtime_ns}")
    return "\n".join(parts)


def tokenize_documents(documents: list[str], tokenizer) -> np.ndarray:
    """One token array for the corpus; documents are separated by tokenizer.eot if it has one."""
    dtype = np.uint16 if tokenizer.vocab_size <= 2 ** 16 else np.uint32
    eot = [] if tokenizer.eot is None else [tokenizer.eot]
    # One small array per document: a Python int list of the whole corpus would take ~9x the memory.
    chunks = [np.asarray(tokenizer.encode(doc) + eot, dtype=dtype) for doc in documents]
    return np.concatenate(chunks) if chunks else np.zeros(0, dtype)


def load_tokens(data_cfg: Any) -> tuple[np.ndarray, Any]:
    """(tokens of the whole corpus as a read-only memmap, tokenizer), tokenizing at most once.

    The cache file is keyed by a hash of the corpus fingerprint (paths, sizes, mtimes) and
    the tokenizer, so editing the corpus or switching tokenizer re-tokenizes.
    """
    key = short_hash(corpus_fingerprint(data_cfg) + "\n#tokenizer\n" + _tokenizer_fingerprint(data_cfg))
    folder = _cache_dir(data_cfg)
    npy, meta_path = os.path.join(folder, key + ".npy"), os.path.join(folder, key + ".json")
    if os.path.isfile(npy) and os.path.isfile(meta_path):
        with open(meta_path) as f:
            meta = json.load(f)
        tokenizer = (CharTokenizer(meta["chars"]) if meta["tokenizer"] == "char"
                     else build_tokenizer(data_cfg))
        return np.load(npy, mmap_mode="r"), tokenizer
    documents = read_documents(data_cfg)
    tokenizer = build_tokenizer(data_cfg, documents)
    tokens = tokenize_documents(documents, tokenizer)
    os.makedirs(folder, exist_ok=True)
    meta = {"tokenizer": _get(data_cfg, "tokenizer", "char"), "num_tokens": int(tokens.size),
            "vocab_size": tokenizer.vocab_size, "source": _get(data_cfg, "source")}
    if isinstance(tokenizer, CharTokenizer):
        meta["chars"] = tokenizer.chars
    # Write to temporary names and rename, so a killed run never leaves a half-written cache.
    tmp = f"{npy}.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
        np.save(f, tokens)
    os.replace(tmp, npy)
    with open(f"{meta_path}.{os.getpid()}.tmp", "w") as f:
        json.dump(meta, f)
    os.replace(f"{meta_path}.{os.getpid()}.tmp", meta_path)  # last: marks the entry complete
    return np.load(npy, mmap_mode="r"), tokenizer


def split_tokens(tokens: np.ndarray, split: str) -> np.ndarray:
    """The fixed split: first 90% of tokens for "train", the rest for "val"."""
    n_train = int(len(tokens) * TRAIN_FRACTION)
    if split == "train":
        return tokens[:n_train]
    if split == "val":
        return tokens[n_train:]
    raise ValueError(f"split must be 'train' or 'val', got {split!r}")


def load_splits(data_cfg: Any) -> tuple[dict[str, np.ndarray], Any]:
    """({"train": tokens, "val": tokens}, tokenizer) for any text source.

    source="tokens" reads pre-tokenized files (nanoGPT's train.bin + val.bin in data.path,
    or one file split 90/10); its tokenizer (data.tokenizer) only decodes samples, and is
    None when it cannot be built (e.g. "gpt2" without vocab files).
    """
    if _get(data_cfg, "source") != "tokens":
        tokens, tokenizer = load_tokens(data_cfg)
        return {s: split_tokens(tokens, s) for s in ("train", "val")}, tokenizer
    path = _get(data_cfg, "path", "")
    if os.path.isdir(path) and not os.path.isfile(os.path.join(path, "train.bin")):
        from jaxmodels.data.shards import read_shard_folder  # launch.prepare / llm.c shards
        splits = read_shard_folder(path)
    elif os.path.isdir(path):
        files = {s: os.path.join(path, f"{s}.bin") for s in ("train", "val")}
        splits = {s: read_token_file(f) for s, f in files.items()}
    else:
        tokens = read_token_file(path)
        splits = {s: split_tokens(tokens, s) for s in ("train", "val")}
    try:
        tokenizer = build_tokenizer(data_cfg) if _get(data_cfg, "tokenizer") != "char" else None
    except (FileNotFoundError, ImportError):
        tokenizer = None
    return splits, tokenizer


# --------------------------------------------------------------------------- windows

_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    """A 64-bit integer hash (SplitMix64's finalizer): cheap, well mixed, deterministic."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


class WindowSource:
    """Example i = the seq_len+1 tokens at offset hash(seed, i) of `tokens` (random access)."""

    def __init__(self, tokens: np.ndarray, seq_len: int, seed: int, num_examples: int = _LONG):
        if len(tokens) < seq_len + 1:
            raise ValueError(f"split has {len(tokens)} tokens, fewer than seq_len+1 = {seq_len + 1}: "
                             "use a bigger corpus or a smaller data.seq_len")
        self.tokens, self.seq_len, self.num_examples = tokens, seq_len, num_examples
        self.num_offsets = len(tokens) - seq_len  # offsets 0 .. len-seq_len-1
        self._seed_hash = _splitmix64(seed & _MASK64)

    def offset(self, index: int) -> int:
        return _splitmix64(self._seed_hash ^ int(index)) % self.num_offsets

    def __len__(self) -> int:
        return self.num_examples

    def __getitem__(self, index: int) -> dict:
        o = self.offset(index)
        window = np.asarray(self.tokens[o:o + self.seq_len + 1], dtype=np.int32)
        return {"inputs": window[:-1], "targets": window[1:],
                "mask": np.ones(self.seq_len, np.float32)}


class StreamSource:
    """Consecutive windows for state carry (tasks/carry.py): the split is cut into `rows`
    equal streams, and example i is window i // rows of stream i % rows. Batched by `rows`,
    batch s row b is window s of stream b, the window right after batch s-1's row b. A
    stream that runs out starts over from its beginning (the carried state then meets a
    discontinuity, as it does at a document boundary)."""

    def __init__(self, tokens: np.ndarray, seq_len: int, rows: int):
        per_row = (len(tokens) - 1) // max(rows, 1)
        self.windows = per_row // seq_len
        if self.windows < 1:
            raise ValueError(f"split has {len(tokens)} tokens, too few for {rows} streams of at least "
                             f"seq_len+1 = {seq_len + 1} tokens: use a bigger corpus, a smaller "
                             f"train.batch_size or a smaller data.seq_len")
        self.tokens, self.seq_len, self.rows, self.per_row = tokens, seq_len, rows, per_row

    def offset(self, index: int) -> int:
        step, row = divmod(int(index), self.rows)
        return row * self.per_row + (step % self.windows) * self.seq_len

    def __len__(self) -> int:
        return _LONG - _LONG % self.rows  # whole batches only

    def __getitem__(self, index: int) -> dict:
        o = self.offset(index)
        window = np.asarray(self.tokens[o:o + self.seq_len + 1], dtype=np.int32)
        return {"inputs": window[:-1], "targets": window[1:],
                "mask": np.ones(self.seq_len, np.float32)}


def _batched(source, split: str, batch_size: int, data_cfg: Any) -> grain.IterDataset:
    ds = grain.MapDataset.source(source)
    if split == "train":
        ds = ds.repeat()
    ds = ds.batch(batch_size, drop_remainder=True)
    return ds.to_iter_dataset(grain.ReadOptions(num_threads=_get(data_cfg, "num_threads", 2),
                                                prefetch_buffer_size=_get(data_cfg, "prefetch", 8)))


def text_dataset(data_cfg: Any, split: str, batch_size: int, seed: int,
                 splits: Optional[dict] = None, stream: bool = False) -> grain.IterDataset:
    """Batches of random windows of the split. "train" is endless; "val" holds about one
    pass over the val tokens (at least one batch), the same windows every time.
    splits: the output of load_splits (loaded here when None). stream: "train" batches
    are consecutive windows of batch_size streams instead (StreamSource)."""
    if splits is None:
        splits, _ = load_splits(data_cfg)
    seq_len = seq_len_of(data_cfg)
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    part = splits[split]
    if split == "train" and stream:
        source = StreamSource(part, seq_len, batch_size)
    elif split == "train":
        source = WindowSource(part, seq_len, seed)
    else:
        n = max(batch_size, len(part) // seq_len)
        source = WindowSource(part, seq_len, seed + 1, num_examples=n)
    return _batched(source, split, batch_size, data_cfg)


def sort_dataset(data_cfg: Any, split: str, batch_size: int, seed: int,
                 num_examples: Optional[int] = None) -> grain.IterDataset:
    """Batches of minGPT sort examples; "val" holds held-out digit sequences only."""
    n = num_examples or (_LONG if split == "train" else max(batch_size, 1024))
    source = SortSource(split, seed, _get(data_cfg, "sort_length", 6), _get(data_cfg, "sort_digits", 3), n)
    return _batched(source, split, batch_size, data_cfg)


def lm_dataset(data_cfg: Any, split: str, batch_size: int, seed: int) -> grain.IterDataset:
    """The LM task's dataset for any data.source."""
    if _get(data_cfg, "source") == "sort":
        return sort_dataset(data_cfg, split, batch_size, seed)
    return text_dataset(data_cfg, split, batch_size, seed)
