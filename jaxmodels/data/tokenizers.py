"""Tokenizers for the LM task: `build_tokenizer(data_cfg)` picks one by `data.tokenizer`.

Every tokenizer has encode(str) -> list[int], decode(ids) -> str, vocab_size, and `eot`
(the end-of-text id that separates documents, or None) and `pad` (or None).

  char   one id per distinct character of the corpus, sorted (nanoGPT shakespeare_char: 65)
  byte   one id per UTF-8 byte (256)
  gpt2   GPT-2's byte-level BPE from local vocab.json + merges.txt (data.vocab_path)
  hf     a Hugging Face `tokenizer.json` (LLaMA folders) via the `tokenizers` library
"""
from __future__ import annotations

import os
from typing import Any, Iterable, Mapping, Optional, Sequence

from jaxmodels.config import ConfigError
from jaxmodels.data.gpt2_bpe import GPT2BPE, find_gpt2_files
from jaxmodels.data.sources import DataNotFoundError

TOKENIZERS = ("char", "byte", "gpt2", "hf")


class CharTokenizer:
    """Character-level: ids are positions in the sorted list of the corpus's characters."""

    eot = None
    pad = None

    def __init__(self, chars: Sequence[str]):
        self.chars = "".join(chars)
        if len(set(self.chars)) != len(self.chars) or list(self.chars) != sorted(self.chars):
            raise ValueError("CharTokenizer needs sorted distinct characters")
        self.stoi = {c: i for i, c in enumerate(self.chars)}
        self.vocab_size = len(self.chars)

    @classmethod
    def from_texts(cls, texts: Iterable[str]) -> "CharTokenizer":
        seen: set[str] = set()
        for t in texts:
            seen.update(t)
        return cls(sorted(seen))

    def encode(self, text: str) -> list[int]:
        try:
            return [self.stoi[c] for c in text]
        except KeyError as e:
            raise ValueError(f"character {e.args[0]!r} is not in this char vocab "
                             f"({self.vocab_size} characters)") from None

    def decode(self, ids) -> str:
        return "".join(self.chars[int(i)] for i in ids)


class ByteTokenizer:
    """UTF-8 bytes as tokens: a fixed 256-entry vocab that needs no corpus."""

    vocab_size = 256
    eot = None
    pad = None

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids) -> str:
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")


class HFTokenizer:
    """A `tokenizer.json` read by the Hugging Face `tokenizers` library (no special tokens
    added by encode; `eot` is the EOS id the file declares, if any)."""

    def __init__(self, path: str):
        try:
            from tokenizers import Tokenizer
        except ImportError:
            raise ImportError("data.tokenizer='hf' needs the `tokenizers` library: "
                              "pip install jaxmodels[tokenizers]") from None
        file = os.path.join(path, "tokenizer.json") if os.path.isdir(path) else path
        if not os.path.isfile(file):
            raise DataNotFoundError(f"no tokenizer.json at {file!r}: set --config.data.vocab_path to the "
                                    "model folder that holds tokenizer.json")
        self.tok = Tokenizer.from_file(file)
        self.vocab_size = self.tok.get_vocab_size(with_added_tokens=True)
        vocab = self.tok.get_vocab(with_added_tokens=True)
        self.eot = next((vocab[t] for t in ("</s>", "<|end_of_text|>", "<|endoftext|>", "<eos>") if t in vocab), None)
        self.pad = next((vocab[t] for t in ("<pad>", "<|pad|>") if t in vocab), self.eot)

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids) -> str:
        return self.tok.decode([int(i) for i in ids], skip_special_tokens=False)


def _get(cfg: Any, key: str, default: Any = None) -> Any:
    if isinstance(cfg, Mapping) or hasattr(cfg, "get"):
        return cfg.get(key, default)
    return getattr(cfg, key, default)


def build_tokenizer(data_cfg: Any, documents: Optional[Iterable[str]] = None):
    """The tokenizer named by data_cfg.tokenizer.

    "char" derives its vocab from the corpus: pass `documents`, set data.vocab (the sorted
    characters), or it reads the corpus from data.source itself.
    """
    kind = _get(data_cfg, "tokenizer", "char")
    if kind == "char":
        chars = _get(data_cfg, "vocab", "")
        if chars:
            return CharTokenizer(sorted(set(chars)))
        if documents is None:
            from jaxmodels.data.sources import read_documents
            documents = read_documents(data_cfg)
        return CharTokenizer.from_texts(documents)
    if kind == "byte":
        return ByteTokenizer()
    if kind == "gpt2":
        return GPT2BPE.from_files(*find_gpt2_files(_get(data_cfg, "vocab_path", "")))
    if kind == "hf":
        return HFTokenizer(_get(data_cfg, "vocab_path", ""))
    raise ConfigError(f"unknown data.tokenizer {kind!r}; valid: {', '.join(TOKENIZERS)}")
