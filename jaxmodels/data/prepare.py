"""Text -> token shards (launch.prepare): streamed, multi-process, resumable.

Input documents come from, in order:
  *.txt (or any non-JSON file)  one document per file, read in ~chunk_bytes pieces cut just
                                after a newline that a non-space character follows (a
                                pre-token boundary for GPT-2-style byte-level BPE, so the ids
                                equal whole-file tokenization; SentencePiece adds its dummy
                                prefix at each piece)
  *.jsonl                       one document per line, field `text_key` (documents longer
                                than 2 x chunk_bytes are cut the same way)
  a folder                      its *.txt / *.jsonl files, sorted, recursively
  a Hugging Face dataset        `hf_dataset` (a local folder saved by save_to_disk, a local
                                data folder, or a hub name when online), field `text_key`
  a tfds dataset                `tfds` (a name prepared for random access in `tfds_data_dir`,
                                as array_record; never downloads), field `text_key`
Each document is followed by the tokenizer's end-of-text id when it has one (nanoGPT).

Pieces are grouped into chunks of ~chunk_bytes; a process pool tokenizes chunks (at most
2 x workers in flight, so memory does not grow with the input), and the main process
appends them, in order, to shards of `shard_tokens` tokens (the first shard, of `val_tokens`,
is the val split, as in llm.c's FineWeb shards). After each completed shard a manifest
records where the next shard starts (chunk number + tokens of that chunk already used);
a rerun after a crash or kill -9 continues from there and writes identical shards.
"""
from __future__ import annotations

import json
import multiprocessing as mp
import os
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Iterator, Optional

import numpy as np

from jaxmodels.config import ConfigError
from jaxmodels.data.shards import FORMATS, ShardWriter, token_dtype
from jaxmodels.data.sources import DataNotFoundError

MANIFEST = "manifest.json"
INPUT_SUFFIXES = (".txt", ".jsonl", ".text", ".md")


@dataclass
class PrepareSpec:
    inputs: list                   # files / folders
    out_dir: str
    tokenizer: str = "gpt2"        # a data.tokenizer kind (not "char": it needs the whole corpus)
    vocab_path: str = ""
    hf_dataset: str = ""
    hf_split: str = "train"          # the split of hf_dataset or tfds
    tfds: str = ""
    tfds_data_dir: str = ""
    text_key: str = "text"
    fmt: str = "llmc"
    prefix: str = "data"
    shard_tokens: int = 100_000_000  # llm.c FineWeb: 1e8 tokens per shard
    val_tokens: int = 0              # 0: the first shard (shard_tokens) validates, as in llm.c
    chunk_bytes: int = 1 << 20
    workers: int = max(1, (os.cpu_count() or 2) - 1)
    progress: bool = True
    extra: dict = field(default_factory=dict)

    def identity(self) -> dict:
        """The settings that decide the shards' contents (a resume must match them)."""
        d = asdict(self)
        for k in ("out_dir", "workers", "progress", "extra"):
            d.pop(k)
        if not self.tfds:  # manifests written before the tfds input existed still match
            d.pop("tfds")
            d.pop("tfds_data_dir")
        d["inputs"] = [os.path.abspath(p) for p in self.inputs]
        return d


# --------------------------------------------------------------------------- reading

def input_files(paths: list) -> list[str]:
    files = []
    for p in paths:
        if os.path.isdir(p):
            found = sorted(os.path.join(r, f) for r, _, fs in os.walk(p) for f in fs
                           if f.endswith(INPUT_SUFFIXES))
            if not found:
                raise DataNotFoundError(f"{p!r} holds no {'/'.join(INPUT_SUFFIXES)} files")
            files += found
        elif os.path.isfile(p):
            files.append(p)
        else:
            raise DataNotFoundError(f"input {p!r} does not exist (give text / .jsonl files or folders)")
    return files


def _last_cut(text: str) -> int:
    """The last position just after a newline that a non-whitespace character follows (a
    pre-token boundary for byte-level BPE), or -1."""
    i = text.rfind("\n", 0, len(text) - 1)
    while i >= 0:
        if not text[i + 1].isspace():
            return i + 1
        i = text.rfind("\n", 0, i)
    return -1


def _split_document(text: str, chunk_bytes: int) -> Iterator[tuple[str, bool]]:
    """(piece, ends_document) of one document, long ones cut at line starts into pieces of
    about chunk_bytes, so that no unit of work (and no worker's memory) grows with a document."""
    while len(text) > 2 * chunk_bytes:
        cut = _last_cut(text[:chunk_bytes])
        if cut <= 0:
            cut = _last_cut(text[:2 * chunk_bytes])
        if cut <= 0:
            break
        yield text[:cut], False
        text = text[cut:]
    yield text, True


def _text_pieces(path: str, chunk_bytes: int) -> Iterator[tuple[str, bool]]:
    """(text, ends_document) pieces of one text file (one document), cut like _split_document."""
    with open(path, encoding="utf-8", errors="replace", newline="") as f:
        carry = ""
        while True:
            block = f.read(chunk_bytes)
            if not block:
                break
            text = carry + block
            cut = _last_cut(text)
            if cut <= 0:
                carry = text
                continue
            carry = text[cut:]
            yield text[:cut], False
        yield carry, True


def _jsonl_docs(path: str, key: str) -> Iterator[str]:
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            record = json.loads(line)
            if key not in record:
                raise ConfigError(f"{path}:{n} has no field {key!r} (has {sorted(record)}): set --text_key")
            yield str(record[key])


def _hf_docs(spec: PrepareSpec) -> Iterator[str]:
    try:
        import datasets
    except ImportError:
        raise ImportError("--hf_dataset needs the Hugging Face `datasets` library: pip install datasets") from None
    name = spec.hf_dataset
    saved = ("dataset_dict.json", "state.json")  # what save_to_disk writes (DatasetDict / Dataset)
    if any(os.path.isfile(os.path.join(name, f)) for f in saved):
        ds = datasets.load_from_disk(name)
        ds = ds[spec.hf_split] if isinstance(ds, datasets.DatasetDict) else ds
    else:
        ds = datasets.load_dataset(name, split=spec.hf_split, streaming=True)
    for record in ds:
        yield str(record[spec.text_key])


def _tfds_docs(spec: PrepareSpec) -> Iterator[str]:
    from jaxmodels.data.sources import tfds_source
    source = tfds_source({"tfds_name": spec.tfds, "tfds_split": spec.hf_split, "tfds_data_dir": spec.tfds_data_dir})
    for i in range(len(source)):  # random access: one example in memory at a time
        example = source[i]
        if spec.text_key not in example:
            raise ConfigError(f"tfds {spec.tfds!r} examples have no field {spec.text_key!r} (has "
                              f"{sorted(example)}): set --text_key")
        text = example[spec.text_key]
        yield text.decode("utf-8", errors="replace") if isinstance(text, bytes) else str(text)


def pieces(spec: PrepareSpec) -> Iterator[tuple[str, bool]]:
    """Every (text, ends_document) piece of the input, in a fixed order."""
    for path in input_files(spec.inputs):
        if path.endswith(".jsonl"):
            for doc in _jsonl_docs(path, spec.text_key):
                yield from _split_document(doc, spec.chunk_bytes)
        else:
            yield from _text_pieces(path, spec.chunk_bytes)
    if spec.hf_dataset:
        for doc in _hf_docs(spec):
            yield from _split_document(doc, spec.chunk_bytes)
    if spec.tfds:
        for doc in _tfds_docs(spec):
            yield from _split_document(doc, spec.chunk_bytes)


def chunks(spec: PrepareSpec) -> Iterator[tuple[list, int]]:
    """(pieces, bytes) groups of about chunk_bytes: the unit of work and of resuming."""
    group, size = [], 0
    for text, end in pieces(spec):
        group.append((text, end))
        size += len(text)
        if size >= spec.chunk_bytes:
            yield group, size
            group, size = [], 0
    if group:
        yield group, size


def total_bytes(spec: PrepareSpec) -> Optional[int]:
    if spec.hf_dataset or spec.tfds:
        return None
    return sum(os.path.getsize(p) for p in input_files(spec.inputs))


# --------------------------------------------------------------------------- tokenizing (workers)

_TOKENIZER = None


def _init_worker(kind: str, vocab_path: str) -> None:
    global _TOKENIZER
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one process per core already
    from jaxmodels.data.tokenizers import build_tokenizer
    _TOKENIZER = build_tokenizer({"tokenizer": kind, "vocab_path": vocab_path})


def _tokenize(group: list, dtype: str) -> np.ndarray:
    tok = _TOKENIZER
    ids = tok.encode_batch([t for t, _ in group])
    eot = tok.eot
    parts = []
    for (_, end), row in zip(group, ids):
        parts.append(np.asarray(row, dtype))
        if end and eot is not None:
            parts.append(np.asarray([eot], dtype))
    return np.concatenate(parts) if parts else np.zeros(0, dtype)


# --------------------------------------------------------------------------- shards + manifest

def _load_manifest(spec: PrepareSpec) -> dict:
    path = os.path.join(spec.out_dir, MANIFEST)
    fresh = {"spec": spec.identity(), "shards": [], "next_chunk": 0, "skip_tokens": 0, "complete": False}
    if not os.path.isfile(path):
        return fresh
    with open(path) as f:
        m = json.load(f)
    if m.get("spec") != spec.identity():
        raise ConfigError(f"{spec.out_dir} holds shards prepared with other settings ({MANIFEST}); "
                          "use a new --out folder or delete that one")
    return m


def _save_manifest(spec: PrepareSpec, m: dict) -> None:
    path = os.path.join(spec.out_dir, MANIFEST)
    with open(path + ".tmp", "w") as f:
        json.dump(m, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(path + ".tmp", path)


def shard_name(spec: PrepareSpec, index: int) -> str:
    split = "val" if index == 0 else "train"
    return f"{spec.prefix}_{split}_{index:06d}.bin"


def prepare(spec: PrepareSpec) -> dict:
    """Writes (or finishes) the shards of `spec`; returns the manifest."""
    from jaxmodels.data.tokenizers import build_tokenizer
    if spec.fmt not in FORMATS:
        raise ConfigError(f"unknown --format {spec.fmt!r}; valid: {', '.join(FORMATS)}")
    if spec.tokenizer == "char":
        raise ConfigError("launch.prepare cannot use the char tokenizer (its vocab is the whole corpus's "
                          "characters); use byte, gpt2, hf or sentencepiece")
    if not spec.inputs and not spec.hf_dataset and not spec.tfds:
        raise ConfigError("nothing to prepare: give input files/folders, --hf_dataset or --tfds")
    os.makedirs(spec.out_dir, exist_ok=True)
    m = _load_manifest(spec)
    if m["complete"]:
        return m
    for f in os.listdir(spec.out_dir):  # half-written shards of a killed run
        if f.endswith(".bin.tmp"):
            os.remove(os.path.join(spec.out_dir, f))
    tok = build_tokenizer({"tokenizer": spec.tokenizer, "vocab_path": spec.vocab_path})
    dtype = token_dtype(tok.vocab_size, spec.fmt)
    capacity = lambda i: (spec.val_tokens or spec.shard_tokens) if i == 0 else spec.shard_tokens  # noqa: E731

    bar = None
    if spec.progress:
        from tqdm import tqdm
        bar = tqdm(total=total_bytes(spec), unit="B", unit_scale=True, desc="prepare", smoothing=0.05)
    index = len(m["shards"])
    writer = ShardWriter(os.path.join(spec.out_dir, shard_name(spec, index)), spec.fmt, dtype)
    ctx = mp.get_context("spawn")  # no fork of a process that may hold threads (tokenizers, jax)
    with ctx.Pool(spec.workers, initializer=_init_worker, initargs=(spec.tokenizer, spec.vocab_path)) as pool:
        pending: deque = deque()
        source = enumerate(chunks(spec))
        done_reading = False
        while True:
            while not done_reading and len(pending) < 2 * spec.workers:
                try:
                    k, (group, size) = next(source)
                except StopIteration:
                    done_reading = True
                    break
                if k < m["next_chunk"]:  # written before the restart
                    if bar is not None:
                        bar.update(size)
                    continue
                pending.append((k, size, pool.apply_async(_tokenize, (group, dtype.str))))
            if not pending:
                break
            k, size, result = pending.popleft()
            tokens = result.get()
            pos = m["skip_tokens"] if k == m["next_chunk"] else 0
            while pos < len(tokens):
                take = min(len(tokens) - pos, capacity(index) - writer.count)
                writer.write(tokens[pos:pos + take])
                pos += take
                if writer.count == capacity(index):
                    writer.close()
                    # the next shard starts at token `pos` of chunk k (k+1 if k is used up)
                    nxt, skip = (k, pos) if pos < len(tokens) else (k + 1, 0)
                    m["shards"].append({"file": shard_name(spec, index), "tokens": writer.count})
                    m.update(next_chunk=nxt, skip_tokens=skip)
                    _save_manifest(spec, m)
                    index += 1
                    writer = ShardWriter(os.path.join(spec.out_dir, shard_name(spec, index)), spec.fmt, dtype)
            if bar is not None:
                bar.update(size)
                bar.set_postfix(shards=index, refresh=False)
    if writer.count:
        writer.close()
        m["shards"].append({"file": shard_name(spec, index), "tokens": writer.count})
    else:
        writer.f.close()
        os.remove(writer.tmp)
    m.update(complete=True, num_tokens=sum(s["tokens"] for s in m["shards"]), vocab_size=tok.vocab_size)
    _save_manifest(spec, m)
    if bar is not None:
        bar.close()
    return m
