"""GPT-2's byte-level BPE, read from a local `vocab.json` + `merges.txt`, in plain Python.

Three steps, as in the GPT-2 paper's tokenizer:
  1. pre-tokenize the text into words with GPT-2's pattern
     `'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+`
     (Python's `re` has no \\p{L} and the `regex` module is not a dependency, so the
     pattern runs on a same-length stand-in string of ASCII character classes);
  2. map each word's UTF-8 bytes to printable stand-in characters (so every byte is a symbol);
  3. merge adjacent symbol pairs in order of merge rank until no ranked pair is left.
"""
from __future__ import annotations

import json
import os
import re
import unicodedata
from functools import lru_cache

from jaxmodels.data.sources import DataNotFoundError

# \s in the `regex` module (Unicode White_Space property); Python's str.isspace() differs
# (it also counts U+001C..U+001F), so spell the set out.
_WHITESPACE = frozenset(
    "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008"
    "\u2009\u200a\u2028\u2029\u202f\u205f\u3000")


def _stand_in(ch: str) -> str:
    r"""The character that represents `ch` in the stand-in string `pretokenize` matches on.

    Letters become "a", numbers "0", other symbols "!", non-space whitespace "\t"; the
    characters the pattern names literally (space, apostrophe, and the lowercase letters
    of the contractions) stay themselves, so the contraction alternatives still see them.
    """
    if ch in _KEEP:
        return ch
    if ch in _WHITESPACE:
        return "\t"
    cat = unicodedata.category(ch)[0]
    return "a" if cat == "L" else "0" if cat == "N" else "!"


_KEEP = frozenset(" 'strevmld")
# GPT-2's pattern over stand-ins: [a-z] are exactly the letters, 0 the numbers, [!'] the rest.
_PATTERN = re.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?[a-z]+| ?0+| ?[!']+|\s+(?!\S)|\s+""")


def pretokenize(text: str) -> list[str]:
    """Splits text into GPT-2 words; the pieces concatenate back to `text` exactly.

    Python's `re` has no \\p{L} or \\p{N}, so the text is first mapped one-to-one onto a
    stand-in string of a few ASCII classes (same length, so match spans carry over).
    """
    table = {ord(c): _stand_in(c) for c in set(text)}
    stand_in = text.translate(table)
    return [text[m.start():m.end()] for m in _PATTERN.finditer(stand_in)]


@lru_cache(maxsize=None)
def byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table.

    Printable Latin-1 bytes stand for themselves; the 68 others (controls, space, ...) are
    moved to code points 256, 257, ... in byte order.
    """
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    table = {b: chr(b) for b in keep}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


class GPT2BPE:
    """Byte-level BPE tokenizer with GPT-2's vocab/merges files.

    encode(str) -> list[int], decode(list[int]) -> str, vocab_size, eot (<|endoftext|>).
    encode treats "<|endoftext|>" in the text as ordinary characters (like tiktoken's
    encode_ordinary); documents are joined with `eot` by the data pipeline instead.
    """

    EOT_TEXT = "<|endoftext|>"

    def __init__(self, vocab: dict[str, int], merges: list[tuple[str, str]]):
        self.encoder = dict(vocab)
        self.decoder = {i: s for s, i in self.encoder.items()}
        self.ranks = {pair: rank for rank, pair in enumerate(merges)}
        self.byte_encoder = byte_to_unicode()
        self.byte_decoder = {c: b for b, c in self.byte_encoder.items()}
        self.vocab_size = max(self.encoder.values()) + 1
        self.eot = self.encoder.get(self.EOT_TEXT)
        self.pad = self.eot
        self._cache: dict[str, list[int]] = {}

    @classmethod
    def from_files(cls, vocab_json: str, merges_txt: str) -> "GPT2BPE":
        with open(vocab_json, encoding="utf-8") as f:
            vocab = json.load(f)
        merges = []
        with open(merges_txt, encoding="utf-8") as f:
            for line in f:
                line = line.rstrip("\n")
                if not line or line.startswith("#version"):
                    continue
                a, b = line.split(" ")
                merges.append((a, b))
        return cls(vocab, merges)

    def _bpe(self, symbols: list[str]) -> list[str]:
        """Merges the lowest-ranked adjacent pair, everywhere it occurs, until none is ranked."""
        while len(symbols) > 1:
            best = min(zip(symbols, symbols[1:]), key=lambda p: self.ranks.get(p, float("inf")))
            if best not in self.ranks:
                break
            merged, i = [], 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    merged.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            symbols = merged
        return symbols

    def _encode_word(self, word: str) -> list[int]:
        ids = self._cache.get(word)
        if ids is None:
            symbols = [self.byte_encoder[b] for b in word.encode("utf-8")]
            try:
                ids = [self.encoder[s] for s in self._bpe(symbols)]
            except KeyError as e:
                raise ValueError(f"GPT-2 vocab has no entry for BPE symbol {e.args[0]!r}: "
                                 "vocab.json and merges.txt do not belong together") from None
            if len(self._cache) < 200_000:
                self._cache[word] = ids
        return ids

    def encode(self, text: str) -> list[int]:
        out: list[int] = []
        for word in pretokenize(text):
            out.extend(self._encode_word(word))
        return out

    def decode(self, ids) -> str:
        chars = "".join(self.decoder[int(i)] for i in ids)
        return bytes(self.byte_decoder[c] for c in chars).decode("utf-8", errors="replace")


def find_gpt2_files(vocab_path: str) -> tuple[str, str]:
    """(vocab.json, merges.txt) from a folder or a vocab.json path; clear error if missing."""
    folder = vocab_path if os.path.isdir(vocab_path) else os.path.dirname(vocab_path)
    vocab_json = vocab_path if vocab_path.endswith(".json") else os.path.join(folder, "vocab.json")
    merges_txt = os.path.join(folder or ".", "merges.txt")
    missing = [p for p in (vocab_json, merges_txt) if not os.path.isfile(p)]
    if not vocab_path or missing:
        raise DataNotFoundError(
            f"GPT-2 tokenizer files not found (looked for {', '.join(missing) or 'vocab.json, merges.txt'}"
            f" from data.vocab_path={vocab_path!r}). Put GPT-2's `vocab.json` and `merges.txt` "
            "(from the Hugging Face `gpt2` model folder) in one folder and pass "
            "--config.data.vocab_path=<that folder>; nothing is downloaded automatically.")
    return vocab_json, merges_txt
