"""Tokenizers for the LM task: `build_tokenizer(data_cfg)` picks one by `data.tokenizer`.

Every tokenizer has encode(str) -> list[int], encode_batch(list[str]) -> list[list[int]],
decode(ids) -> str, vocab_size, `eot` (the end-of-text id that separates documents, or
None), `bos` (or None) and `pad` (or None). encode adds no special tokens: the data
pipelines place BOS/EOS themselves.

  char           one id per distinct character of the corpus, sorted (nanoGPT shakespeare_char: 65)
  byte           one id per UTF-8 byte (256)
  gpt2           GPT-2's byte-level BPE from local vocab.json + merges.txt (data.vocab_path),
                 run by `tiktoken` (about 8x faster) when it is installed and the files
                 allow it (see TiktokenTokenizer), else by the Hugging Face `tokenizers`
                 library; the ids are the same either way
  tiktoken       one of tiktoken's named encodings (data.vocab_path: gpt2, r50k_base,
                 cl100k_base, o200k_base, ...), read from tiktoken's cache (TIKTOKEN_CACHE_DIR)
                 or downloaded by tiktoken
  hf             any Hugging Face `tokenizer.json`, via `tokenizers`
  sentencepiece  a SentencePiece `tokenizer.model` (LLaMA-1/2, Mistral), via `sentencepiece`
"""
from __future__ import annotations

import json
import os
from typing import Any, Iterable, Mapping, Optional, Sequence

from jaxmodels.config import ConfigError
from jaxmodels.data.sources import DataNotFoundError

TOKENIZERS = ("char", "byte", "gpt2", "hf", "sentencepiece", "tiktoken")
EOS_NAMES = ("</s>", "<|end_of_text|>", "<|endoftext|>", "<eos>", "<|im_end|>")
BOS_NAMES = ("<s>", "<|begin_of_text|>", "<bos>")


class _PerText:
    """encode_batch for tokenizers that have no faster batch path."""

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def token_id(self, token: str) -> Optional[int]:
        return None


class CharTokenizer(_PerText):
    """Character-level: ids are positions in the sorted list of the corpus's characters."""

    eot = bos = pad = None

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


class ByteTokenizer(_PerText):
    """UTF-8 bytes as tokens: a fixed 256-entry vocab that needs no corpus."""

    vocab_size = 256
    eot = bos = pad = None

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids) -> str:
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")


def _import_tokenizers():
    try:
        import tokenizers
    except ImportError:
        raise ImportError("data.tokenizer 'gpt2' / 'hf' need the `tokenizers` library: "
                          "pip install tokenizers (a jaxmodels dependency)") from None
    return tokenizers


class HFTokenizer:
    """A `tokenizers.Tokenizer`, read from a tokenizer.json (`from_file`) or built by
    `gpt2_tokenizer`. `eot` / `bos` are the EOS / BOS ids its vocab declares, if any."""

    folder = ""  # the model folder it came from (chat templates live there)

    def __init__(self, tok):
        self.tok = tok
        self.vocab_size = tok.get_vocab_size(with_added_tokens=True)
        vocab = tok.get_vocab(with_added_tokens=True)
        self.eot = next((vocab[t] for t in EOS_NAMES if t in vocab), None)
        self.bos = next((vocab[t] for t in BOS_NAMES if t in vocab), None)
        self.pad = next((vocab[t] for t in ("<pad>", "<|pad|>") if t in vocab), self.eot)

    @classmethod
    def from_file(cls, path: str) -> "HFTokenizer":
        tokenizers = _import_tokenizers()
        file = os.path.join(path, "tokenizer.json") if os.path.isdir(path) else path
        if not os.path.isfile(file):
            raise DataNotFoundError(f"no tokenizer.json at {file!r}: set --config.data.vocab_path to the "
                                    "model folder that holds tokenizer.json")
        out = cls(tokenizers.Tokenizer.from_file(file))
        out.folder = os.path.dirname(os.path.abspath(file))  # where a chat template may live
        return out

    def token_id(self, token: str) -> Optional[int]:
        return self.tok.token_to_id(token)

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self.tok.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids) -> str:
        return self.tok.decode([int(i) for i in ids], skip_special_tokens=False)


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


# GPT-2's pre-tokenizer split (the regex of its encoder.py; the `tokenizers` ByteLevel
# pre-tokenizer uses the same one).
GPT2_SPLIT = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def byte_symbols() -> dict[str, int]:
    """GPT-2's printable stand-in character for each byte (vocab.json spells tokens in them)
    -> the byte: printable Latin-1 bytes stand for themselves, the other 68 are mapped in
    order to U+0100 onwards."""
    printable = [b for b in range(256) if 0x21 <= b <= 0x7E or 0xA1 <= b <= 0xAC or 0xAE <= b]
    out = {chr(b): b for b in printable}
    others = [b for b in range(256) if b not in out.values()]
    out.update({chr(256 + i): b for i, b in enumerate(others)})
    return out


class TiktokenTokenizer:
    """A `tiktoken.Encoding`: a named one (`from_name`) or GPT-2-format files (`from_gpt2_files`).

    tiktoken merges, at each step, the adjacent pair whose concatenation has the lowest rank,
    and emits ranks as ids (a piece that is a whole token is that token); `tokenizers` (and
    GPT-2's own encoder) merge the listed pair with the lowest merge index and emit vocab ids.
    `from_gpt2_files` uses ids as ranks and checks what that needs: every non-special token
    is a byte or a merge result, each merge makes a new token, merge results' ids grow in
    merge order, and the listed merges turn each token's own bytes into that token (fails
    e.g. for "Ġ12" made by "Ġ1"+"2" when "1"+"2" merges first: tiktoken would emit it for
    " 12", `tokenizers` never). GPT-2's files and files `tokenizers`' BpeTrainer writes pass;
    it returns None for files that do not.
    Text that spells a special token encodes to that token, as in `tokenizers`.
    """

    folder = ""

    def __init__(self, enc, vocab_size: int, vocab: Optional[Mapping[str, int]] = None):
        self.enc = enc
        self.vocab_size = vocab_size
        self.vocab = vocab
        specials = {t: enc.encode_single_token(t) for t in enc.special_tokens_set}
        self.eot = next((specials[t] for t in EOS_NAMES if t in specials), None)
        self.bos = next((specials[t] for t in BOS_NAMES if t in specials), None)
        self.pad = next((specials[t] for t in ("<pad>", "<|pad|>") if t in specials), self.eot)

    @staticmethod
    def _import():
        try:
            import tiktoken
        except ImportError:
            raise ImportError("data.tokenizer='tiktoken' needs the `tiktoken` library: "
                              "pip install tiktoken (a jaxmodels dependency)") from None
        return tiktoken

    @classmethod
    def from_name(cls, name: str) -> "TiktokenTokenizer":
        tiktoken = cls._import()
        if name not in tiktoken.list_encoding_names():
            raise ConfigError(f"unknown tiktoken encoding {name!r} (data.vocab_path); valid: "
                              f"{', '.join(tiktoken.list_encoding_names())}")
        try:
            enc = tiktoken.get_encoding(name)
        except Exception as e:  # offline and not in tiktoken's cache
            raise DataNotFoundError(
                f"tiktoken could not load the {name!r} encoding ({type(e).__name__}): it downloads it "
                "once into TIKTOKEN_CACHE_DIR; on an offline machine copy a filled cache folder there "
                "and set TIKTOKEN_CACHE_DIR, or use --tokenizer gpt2 with local vocab.json + merges.txt") from None
        return cls(enc, enc.n_vocab)

    @classmethod
    def from_gpt2_files(cls, vocab_json: str, merges_txt: str) -> Optional["TiktokenTokenizer"]:
        try:
            tiktoken = cls._import()
        except ImportError:
            return None
        with open(vocab_json, encoding="utf-8") as f:
            vocab = json.load(f)
        with open(merges_txt, encoding="utf-8") as f:
            merges = [line.split() for line in f if line.strip() and not line.startswith("#version")]
        to_byte = byte_symbols()
        if any(len(m) != 2 for m in merges) or any(c not in vocab for c in to_byte):
            return None
        made, last = set(), -1
        for a, b in merges:  # merge results: new tokens, ids growing in merge order
            i = vocab.get(a + b)
            if i is None or i <= last or a + b in made or any(c not in to_byte for c in a + b):
                return None
            made.add(a + b)
            last = i
        ranks, specials = {}, {}
        for token, i in vocab.items():
            if token in to_byte or token in made:
                ranks[bytes(to_byte[c] for c in token)] = i
            elif token == "<|endoftext|>":  # the one special token gpt2_tokenizer declares
                specials[token] = i
            else:  # a token no merge makes: tokenizers never emits it, tiktoken could
                return None
        if not _merges_reach_every_token(vocab_json, merges_txt, made):
            return None
        enc = tiktoken.Encoding(os.path.basename(os.path.dirname(os.path.abspath(vocab_json))) or "gpt2",
                                pat_str=GPT2_SPLIT, mergeable_ranks=ranks, special_tokens=specials)
        out = cls(enc, len(vocab), vocab)
        out.folder = os.path.dirname(os.path.abspath(vocab_json))
        return out

    def token_id(self, token: str) -> Optional[int]:
        if self.vocab is not None:
            return self.vocab.get(token)
        try:
            return self.enc.encode_single_token(token)
        except KeyError:
            return None

    def encode(self, text: str) -> list[int]:
        return self.enc.encode(text, allowed_special="all")

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return self.enc.encode_batch(list(texts), allowed_special="all")

    def decode(self, ids) -> str:
        return self.enc.decode([int(i) for i in ids])


def _merges_reach_every_token(vocab_json: str, merges_txt: str, made: Iterable[str]) -> bool:
    """Whether BPE by merge index turns each merge-made token's characters into that token."""
    try:
        tokenizers = _import_tokenizers()
    except ImportError:
        return False
    model = tokenizers.models.BPE.from_file(vocab_json, merges_txt)
    return all(len(pieces) == 1 for pieces in map(model.tokenize, made))


def gpt2_tokenizer(vocab_path: str, backend: str = "auto"):
    """GPT-2's tokenizer as transformers' GPT2Tokenizer builds it from vocab.json + merges.txt:
    byte-level BPE, GPT-2's split regex, no prefix space, <|endoftext|> a special token.
    backend: "auto" (tiktoken when installed and the files allow it), "tiktoken" or "tokenizers"."""
    vocab_json, merges_txt = find_gpt2_files(vocab_path)
    if backend != "tokenizers":
        fast = TiktokenTokenizer.from_gpt2_files(vocab_json, merges_txt)
        if fast is not None or backend == "tiktoken":
            if fast is None:
                raise ValueError(f"{vocab_json} + {merges_txt} cannot run on tiktoken with the same ids "
                                 "(a token no merge makes, or merge ids out of order); use backend='tokenizers'")
            return fast
    tokenizers = _import_tokenizers()
    tok = tokenizers.Tokenizer(tokenizers.models.BPE.from_file(vocab_json, merges_txt))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = tokenizers.decoders.ByteLevel()
    if tok.token_to_id("<|endoftext|>") is not None:
        tok.add_special_tokens([tokenizers.AddedToken("<|endoftext|>", special=True)])
    out = HFTokenizer(tok)
    out.folder = os.path.dirname(os.path.abspath(vocab_json))
    return out


class SentencePieceTokenizer(_PerText):
    """A SentencePiece `tokenizer.model`; `eot` / `bos` are its EOS / BOS ids."""

    def __init__(self, path: str):
        try:
            import sentencepiece
        except ImportError:
            raise ImportError("data.tokenizer='sentencepiece' needs the `sentencepiece` library: "
                              "pip install sentencepiece (a jaxmodels dependency)") from None
        file = os.path.join(path, "tokenizer.model") if os.path.isdir(path) else path
        if not os.path.isfile(file):
            raise DataNotFoundError(f"no tokenizer.model at {file!r}: set --config.data.vocab_path to the "
                                    "model folder that holds tokenizer.model")
        self.sp = sentencepiece.SentencePieceProcessor(model_file=file)
        self.folder = os.path.dirname(os.path.abspath(file))
        self.vocab_size = self.sp.get_piece_size()
        ids = lambda i: i if i >= 0 else None  # noqa: E731  (sentencepiece says -1 for "none")
        self.eot, self.bos = ids(self.sp.eos_id()), ids(self.sp.bos_id())
        self.pad = ids(self.sp.pad_id()) if self.sp.pad_id() >= 0 else self.eot

    def token_id(self, token: str) -> Optional[int]:
        i = self.sp.piece_to_id(token)
        return i if self.sp.id_to_piece(i) == token else None

    def encode(self, text: str) -> list[int]:
        return self.sp.encode(text)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return self.sp.encode(list(texts))

    def decode(self, ids) -> str:
        return self.sp.decode([int(i) for i in ids])


def _get(cfg: Any, key: str, default: Any = None) -> Any:
    if isinstance(cfg, Mapping) or hasattr(cfg, "get"):
        return cfg.get(key, default)
    return getattr(cfg, key, default)


def tokenizer_for_folder(folder: str):
    """A model folder's own tokenizer: tokenizer.json, else tokenizer.model (SentencePiece),
    else vocab.json + merges.txt (GPT-2)."""
    has = lambda name: os.path.isfile(os.path.join(folder, name))  # noqa: E731
    if has("tokenizer.json"):
        return HFTokenizer.from_file(folder)
    if has("tokenizer.model"):
        return SentencePieceTokenizer(folder)
    if has("vocab.json") and has("merges.txt"):
        return gpt2_tokenizer(folder)
    raise DataNotFoundError(f"{folder!r} has no tokenizer.json, tokenizer.model or vocab.json + merges.txt; "
                            "pass --tokenizer <folder that has one>")


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
        return gpt2_tokenizer(_get(data_cfg, "vocab_path", ""))
    if kind == "hf":
        return HFTokenizer.from_file(_get(data_cfg, "vocab_path", ""))
    if kind == "sentencepiece":
        return SentencePieceTokenizer(_get(data_cfg, "vocab_path", ""))
    if kind == "tiktoken":
        return TiktokenTokenizer.from_name(_get(data_cfg, "vocab_path", "") or "gpt2")
    raise ConfigError(f"unknown data.tokenizer {kind!r}; valid: {', '.join(TOKENIZERS)}")
