"""Text corpora for the LM task: `read_documents(data_cfg)` -> list of strings, by data.source.

  file      data.path: one text file, or a folder whose text files are read in sorted order
  embedded  an offline corpus every machine has: the Python standard library's own top-level
            .py sources, in sorted order, up to data.max_bytes (it differs between Python
            versions, so it is deterministic per machine, not across machines)
  tfds      tfds.data_source(data.tfds_name, split=data.tfds_split) of an already prepared
            text dataset, field data.tfds_text_key; never downloads
Not corpora: "tokens" (already tokenized uint16 files such as nanoGPT's train.bin/val.bin
or an llm.c shard, read by `read_token_file`), "sort" (data/sort.py) and "instruct"
(data/instruct.py).
"""
from __future__ import annotations

import hashlib
import os
import sysconfig
from typing import Any

import numpy as np

from jaxmodels.config import ConfigError


class DataNotFoundError(ConfigError, FileNotFoundError):
    """A data file, folder, tfds dataset or tokenizer file the config names is missing.

    Both a ConfigError (launch/ prints the message, no traceback) and a FileNotFoundError.
    """


class DataError(ConfigError):
    """Data that exists but cannot be trained on (token ids past the vocabulary, a corrupt
    image with data.bad_images="error"); the message names the file."""


CORPUS_SOURCES = ("file", "embedded", "tfds")
# Every data.source the LM task accepts (tokens: pre-tokenized files; sort: data/sort.py;
# instruct: data/instruct.py).
ALL_SOURCES = CORPUS_SOURCES + ("tokens", "sort", "instruct")
# Small public-domain corpora shipped inside the package (pyproject package-data), so the
# configs that name them run on a fresh machine with no download:
#   tinyshakespeare.txt  char-rnn's / nanoGPT's input.txt (1,115,394 characters, 65 distinct)
CORPORA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpora")


def packaged_corpus(name: str) -> str:
    """The path of a corpus shipped with the package (see CORPORA_DIR)."""
    return os.path.join(CORPORA_DIR, name)


TEXT_SUFFIXES = (".txt", ".md", ".py", ".text", ".rst", ".json", ".jsonl", ".csv", ".tex", ".html")


def _get(cfg: Any, key: str, default: Any = None) -> Any:
    return cfg.get(key, default) if hasattr(cfg, "get") else getattr(cfg, key, default)


def _read_text(path: str) -> str:
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read()


def _capped(paths: list[str], max_bytes: int) -> list[str]:
    """Leading files of `paths` until their sizes reach max_bytes (0: all); at least one."""
    out, total = [], 0
    for p in paths:
        if max_bytes and out and total >= max_bytes:
            break
        out.append(p)
        total += os.path.getsize(p)
    return out


def file_paths(path: str, max_bytes: int = 0, path_help: str = "") -> list[str]:
    """The files a "file" source reads: `path` itself, or the text files under a folder.

    path_help (data.path_help) is appended to the error when `path` does not exist.
    """
    if not path:
        raise ConfigError("data.source='file' needs --config.data.path=<text file or folder>")
    if os.path.isfile(path):
        return [path]
    if not os.path.isdir(path):
        raise DataNotFoundError(f"data.path {path!r} does not exist (cwd {os.getcwd()}). "
                                + (path_help or "Pass --config.data.path=<text file or folder>."))
    found = []
    for root, dirs, files in os.walk(path):
        dirs.sort()
        found += [os.path.join(root, f) for f in sorted(files) if f.endswith(TEXT_SUFFIXES)]
    if not found:
        raise DataNotFoundError(f"no text files ({', '.join(TEXT_SUFFIXES)}) under {path!r}")
    return _capped(found, max_bytes)


def embedded_paths(max_bytes: int) -> list[str]:
    """The standard library's top-level .py files in sorted order, capped at max_bytes."""
    stdlib = sysconfig.get_paths()["stdlib"]
    names = sorted(f for f in os.listdir(stdlib) if f.endswith(".py"))
    return _capped([os.path.join(stdlib, f) for f in names], max_bytes)


def tfds_source(data_cfg: Any):
    """tfds.data_source of data.tfds_name / tfds_split / tfds_data_dir (random access, no download)."""
    import tensorflow_datasets as tfds

    name = _get(data_cfg, "tfds_name", "")
    split = _get(data_cfg, "tfds_split", "train")
    data_dir = _get(data_cfg, "tfds_data_dir", "") or None
    if not name:
        raise ConfigError("data.source='tfds' needs --config.data.tfds_name=<dataset>")
    try:
        # download=False: offline, an implicit download retries for minutes (docs/cpu_notes.md).
        return tfds.data_source(name, split=split, data_dir=data_dir, download=False)
    except Exception as e:  # not prepared, wrong format, unknown name: one clear message
        raise DataNotFoundError(
            f"tfds dataset {name!r} split {split!r} is not prepared for random access in "
            f"{data_dir or 'the default tfds data_dir'} ({type(e).__name__}: {str(e)[:200]}). Prepare it "
            f"once with `tfds build {name} --file_format=array_record` (needs tensorflow and network), "
            "or train on a local text file with --config.data.source=file --config.data.path=<file>."
        ) from e


def _tfds_documents(data_cfg: Any) -> list[str]:
    source = tfds_source(data_cfg)
    key = _get(data_cfg, "tfds_text_key", "text")
    max_bytes = _get(data_cfg, "max_bytes", 0)
    docs, total = [], 0
    for i in range(len(source)):
        example = source[i]
        if key not in example:
            raise ConfigError(f"tfds example has no field {key!r}; set data.tfds_text_key to one of "
                              f"{', '.join(sorted(example))}")
        text = example[key]
        text = text.decode("utf-8", errors="replace") if isinstance(text, bytes) else str(text)
        docs.append(text)
        total += len(text)
        if max_bytes and total >= max_bytes:
            break
    return docs


def read_documents(data_cfg: Any) -> list[str]:
    """The corpus named by data.source as a list of documents (one per file / example)."""
    source = _get(data_cfg, "source", "embedded")
    max_bytes = _get(data_cfg, "max_bytes", 0)
    if source == "file":
        return [_read_text(p) for p in file_paths(_get(data_cfg, "path", ""), max_bytes, _get(data_cfg, "path_help", ""))]
    if source == "embedded":
        return [_read_text(p) for p in embedded_paths(max_bytes)]
    if source == "tfds":
        return _tfds_documents(data_cfg)
    raise ConfigError(f"unknown text data.source {source!r}; valid: {', '.join(ALL_SOURCES)}")


def corpus_fingerprint(data_cfg: Any) -> str:
    """A string that changes whenever the corpus would: file paths, sizes, mtimes, options.

    Cheap (no reading), so the token cache can be checked before anything is tokenized.
    """
    source = _get(data_cfg, "source", "embedded")
    max_bytes = _get(data_cfg, "max_bytes", 0)
    if source in ("file", "embedded"):
        paths = (file_paths(_get(data_cfg, "path", ""), max_bytes, _get(data_cfg, "path_help", "")) if source == "file"
                 else embedded_paths(max_bytes))
        parts = [f"{source}|{max_bytes}"]
        for p in paths:
            st = os.stat(p)
            parts.append(f"{os.path.abspath(p)}|{st.st_size}|{st.st_mtime_ns}")
        return "\n".join(parts)
    if source == "tfds":
        src = tfds_source(data_cfg)  # fails fast if not prepared
        return "|".join(str(x) for x in ("tfds", _get(data_cfg, "tfds_name"), _get(data_cfg, "tfds_split"),
                                         _get(data_cfg, "tfds_data_dir"), _get(data_cfg, "tfds_text_key"),
                                         max_bytes, len(src)))
    raise ConfigError(f"unknown text data.source {source!r}; valid: {', '.join(ALL_SOURCES)}")


LLMC_MAGIC = 20240520  # llm.c token shards: 256 int32 header (magic, version, count), uint16 tokens


def read_token_file(path: str) -> np.ndarray:
    """Tokens of a pre-tokenized file as a read-only memmap, without reading it all.

    .npy: as saved by numpy; .bin with llm.c's header: its tokens (header version 1: uint16,
    2: uint32); other .bin: raw uint16 (nanoGPT's prepare.py output).
    """
    if not os.path.isfile(path):
        raise DataNotFoundError(f"token file {path!r} does not exist")
    if path.endswith(".npy"):
        return np.load(path, mmap_mode="r")
    header = np.fromfile(path, dtype=np.int32, count=256) if os.path.getsize(path) >= 1024 else None
    if header is not None and header[0] == LLMC_MAGIC:
        dtype = np.uint32 if header[1] == 2 else np.uint16
        if header[2] == 0:
            return np.zeros(0, dtype)
        return np.memmap(path, dtype=dtype, mode="r", offset=256 * 4, shape=(int(header[2]),))
    if os.path.getsize(path) == 0:
        return np.zeros(0, np.uint16)
    return np.memmap(path, dtype=np.uint16, mode="r")


def token_files(data_cfg: Any) -> dict:
    """{split: file} the "tokens" source reads (both splits share one file when it is split 90/10)."""
    path = _get(data_cfg, "path", "")
    if os.path.isdir(path):
        return {s: os.path.join(path, f"{s}.bin") for s in ("train", "val")}
    return {"train": path, "val": path}


def check_token_ids(splits: dict, files: dict, vocab_size: int) -> None:
    """Every token id must index the model's embedding: an id >= vocab_size would read past it
    (NaN or garbage, then learning-rate advice) instead of naming the bad file. One pass over
    the (memory-mapped) tokens, in chunks."""
    for split, tokens in splits.items():
        chunk = 1 << 24
        for start in range(0, len(tokens), chunk):
            part = np.asarray(tokens[start:start + chunk])
            if part.size and int(part.max()) >= vocab_size:
                at = start + int(np.argmax(part >= vocab_size))
                raise DataError(f"token file {files.get(split, '?')} holds id {int(tokens[at])} at position "
                                f"{at} of its {split} tokens, but model.vocab_size={vocab_size}: the file "
                                f"was made with another tokenizer, or set --config.model.vocab_size to "
                                f"at least {int(part.max()) + 1}")


def short_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
