"""Tokenizers: char / byte / GPT-2 BPE / tokenizer.json / SentencePiece, the library ones
checked id for id against transformers on the committed fixtures (tests/fixtures/tokenizers,
written by tests/fixtures/make_tokenizers.py)."""
import json
import os

import pytest

from jaxmodels.config import ConfigError
from jaxmodels.data.tokenizers import ByteTokenizer, CharTokenizer, build_tokenizer

SHAKESPEARE = os.path.join(os.path.dirname(__file__), "..", "..", "jaxmodels", "data", "corpora",
                           "tinyshakespeare.txt")
FIXTURES = os.path.join(os.path.dirname(__file__), "..", "fixtures", "tokenizers")

TRICKY = [
    "Hello world!! It's 2024, isn't it?",
    "  leading spaces, trailing spaces   ",
    "tabs\tand\nnewlines\n\n  indented\n",
    "they'll've we'd I'M 'tis don''t",
    "héllo wörld — ½ ٣٤ 世界 Ⅻ ",
    "x\u3000y\u00a0z\x1cw",
    "a+b=c; f(x)->y   #!@$ 3.14e-10",
    "",
]


def test_char_tokenizer_sorted_vocab_and_round_trip():
    tok = CharTokenizer.from_texts(["hello world", "abc!"])
    assert tok.chars == " !abcdehlorw"
    assert tok.vocab_size == 12
    assert tok.encode("cab") == [4, 2, 3]
    assert tok.decode(tok.encode("hello abc!")) == "hello abc!"
    with pytest.raises(ValueError, match="not in this char vocab"):
        tok.encode("z")


def test_char_tokenizer_on_tiny_shakespeare_has_65_characters():
    with open(SHAKESPEARE) as f:
        text = f.read()
    tok = CharTokenizer.from_texts([text])
    assert tok.vocab_size == 65  # nanoGPT shakespeare_char/prepare.py
    assert tok.chars[:3] == "\n !" and tok.chars[-1] == "z"
    assert tok.decode(tok.encode(text[:5000])) == text[:5000]


def test_byte_tokenizer_round_trips_unicode():
    tok = ByteTokenizer()
    assert tok.vocab_size == 256
    for text in TRICKY:
        ids = tok.encode(text)
        assert all(0 <= i < 256 for i in ids)
        assert tok.decode(ids) == text
    assert tok.encode("é") == [0xC3, 0xA9]


# A tiny handmade GPT-2-style BPE: the 256 byte symbols, then these merges in rank order.
MERGES = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("i", "n"), ("Ġ", "a"), ("e", "r"), ("Ġ", "w"),
          ("o", "r"), ("l", "l"), ("Ġw", "or"), ("Ġwor", "l"), ("Ġworl", "d"), ("in", "g"),
          ("'", "s"), ("1", "2"), ("Ġ", "1"), ("Ġ1", "2"), ("h", "é"), ("Ã", "©"), ("Ġ", "Ġ")]


def byte_to_unicode():
    """GPT-2's printable stand-ins for the 256 bytes (vocab.json spells byte-level BPE in them)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def write_bpe_fixture(folder):
    symbols = [byte_to_unicode()[b] for b in range(256)]
    for a, b in MERGES:
        if a + b not in symbols:
            symbols.append(a + b)
    vocab = {s: i for i, s in enumerate(symbols)}
    vocab["<|endoftext|>"] = len(vocab)
    with open(os.path.join(folder, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False)
    with open(os.path.join(folder, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in MERGES))
    return vocab


def test_gpt2_bpe_merges_by_rank_and_round_trips(tmp_path):
    vocab = write_bpe_fixture(str(tmp_path))
    tok = build_tokenizer({"tokenizer": "gpt2", "vocab_path": str(tmp_path)})
    assert tok.vocab_size == len(vocab) and tok.eot == vocab["<|endoftext|>"]
    assert tok.encode(" the world") == [vocab["Ġthe"], vocab["Ġworld"]]
    assert tok.encode("the") == [vocab["t"], vocab["he"]]      # "Ġt" needs the space
    # "12" (rank 14) merges before "Ġ1" (rank 15), after which "Ġ"+"12" has no merge.
    assert tok.encode(" 123") == [vocab["Ġ"], vocab["12"], vocab["3"]]
    assert tok.encode(" 1") == [vocab["Ġ1"]]
    assert tok.encode("é") == [vocab["Ã©"]]                  # UTF-8 bytes C3 A9, merged
    for text in TRICKY:
        assert tok.decode(tok.encode(text)) == text


def test_gpt2_missing_files_error_says_where_to_put_them(tmp_path):
    with pytest.raises(FileNotFoundError, match="vocab.json.*merges.txt.*vocab_path"):
        build_tokenizer({"tokenizer": "gpt2", "vocab_path": str(tmp_path)})


def test_hf_tokenizer_json(tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    vocab = {"<unk>": 0, "</s>": 1, "a": 2, "b": 3, "ab": 4, "Ġ": 5}
    model = tokenizers.models.BPE(vocab, [("a", "b")], unk_token="<unk>")
    tk = tokenizers.Tokenizer(model)
    tk.save(str(tmp_path / "tokenizer.json"))
    tok = build_tokenizer({"tokenizer": "hf", "vocab_path": str(tmp_path)})
    assert tok.vocab_size == 6 and tok.eot == 1
    assert tok.encode("abab") == [4, 4]
    tk.decoder = tokenizers.decoders.Fuse()  # concatenate tokens (LLaMA files chain Fuse too)
    tk.save(str(tmp_path / "tokenizer.json"))
    assert build_tokenizer({"tokenizer": "hf", "vocab_path": str(tmp_path)}).decode([4, 2, 3]) == "abab"


def test_unknown_tokenizer_lists_valid_ones():
    with pytest.raises(ConfigError, match="char, byte, gpt2, hf, sentencepiece"):
        build_tokenizer({"tokenizer": "wordpiece"})


def test_hf_tokenizer_without_the_library_names_the_extra(monkeypatch, tmp_path):
    import sys
    monkeypatch.setitem(sys.modules, "tokenizers", None)  # makes `import tokenizers` fail
    with pytest.raises(ImportError, match=r"pip install tokenizers"):
        build_tokenizer({"tokenizer": "hf", "vocab_path": str(tmp_path)})


REFERENCE = os.path.join(FIXTURES, "reference.json")


@pytest.mark.parametrize("kind,folder", [("gpt2", "gpt2"), ("hf", "hf"), ("sentencepiece", "spm")])
def test_ids_equal_transformers_on_fixture_tokenizers(kind, folder):
    """transformers' AutoTokenizer ids (add_special_tokens=False) on the same files."""
    with open(REFERENCE, encoding="utf-8") as f:
        ref = json.load(f)
    tok = build_tokenizer({"tokenizer": kind, "vocab_path": os.path.join(FIXTURES, folder)})
    expected = ref["ids"][folder]
    assert any(len(e) > 10 for e in expected)  # the reference is not trivially empty
    got = [tok.encode(t) for t in ref["texts"]]
    if kind == "sentencepiece":
        # One known divergence: transformers' converted SentencePiece (tokenizers' Metaspace)
        # adds no dummy-prefix "▁" when the text already starts with a space; sentencepiece
        # itself, the library that defined the model, always adds it. We follow sentencepiece.
        lead = [i for i, t in enumerate(ref["texts"]) if t.startswith(" ")]
        assert lead and all(got[i][1:] == expected[i] for i in lead)
        got = [g for i, g in enumerate(got) if i not in lead]
        expected = [e for i, e in enumerate(expected) if i not in lead]
    assert got == expected
    assert tok.encode_batch(ref["texts"]) == [tok.encode(t) for t in ref["texts"]]
    for text in ref["texts"]:
        assert tok.decode(tok.encode(text)).strip() == text.strip()  # SentencePiece drops its dummy prefix


def test_sentencepiece_special_ids_and_missing_file(tmp_path):
    tok = build_tokenizer({"tokenizer": "sentencepiece", "vocab_path": os.path.join(FIXTURES, "spm")})
    assert (tok.bos, tok.eot, tok.vocab_size) == (1, 2, 600)
    assert tok.token_id("</s>") == 2 and tok.token_id("no-such-piece") is None
    with pytest.raises(FileNotFoundError, match="tokenizer.model.*vocab_path"):
        build_tokenizer({"tokenizer": "sentencepiece", "vocab_path": str(tmp_path)})


def test_gpt2_on_tiktoken_gives_the_tokenizers_ids():
    """The gpt2 kind runs on tiktoken when it can (about 8x faster): same ids, decode, specials."""
    pytest.importorskip("tiktoken")
    from jaxmodels.data.tokenizers import TiktokenTokenizer, gpt2_tokenizer
    folder = os.path.join(FIXTURES, "gpt2")
    fast, ref = build_tokenizer({"tokenizer": "gpt2", "vocab_path": folder}), gpt2_tokenizer(folder, "tokenizers")
    assert isinstance(fast, TiktokenTokenizer) and not isinstance(ref, TiktokenTokenizer)
    with open(REFERENCE, encoding="utf-8") as f:
        texts = json.load(f)["texts"] + TRICKY + ["a<|endoftext|>b <|endoftext|>\n<|endoftext"]
    assert [fast.encode(t) for t in texts] == [ref.encode(t) for t in texts]
    assert fast.encode("a<|endoftext|>b")[1] == fast.eot == ref.eot  # spelled specials are specials
    assert fast.encode_batch(texts) == ref.encode_batch(texts)
    assert [fast.decode(fast.encode(t)) for t in texts] == [ref.decode(ref.encode(t)) for t in texts]
    assert (fast.vocab_size, fast.pad, fast.bos, fast.folder) == (ref.vocab_size, ref.pad, ref.bos, ref.folder)
    assert fast.token_id("<|endoftext|>") == ref.token_id("<|endoftext|>") and fast.token_id("nope!") is None


def test_gpt2_files_tiktoken_cannot_match_fall_back_to_tokenizers(tmp_path):
    """Files on which tiktoken's rank order would give other ids: the tokenizers backend."""
    pytest.importorskip("tiktoken")
    import shutil
    from jaxmodels.data.tokenizers import HFTokenizer, TiktokenTokenizer, gpt2_tokenizer
    # 1. The hand-made merges above: "12" merges before "Ġ1", so " 12" is "Ġ" "12" by merges,
    # but tiktoken would emit the token "Ġ12" (made by "Ġ1" + "2") for it.
    vocab = write_bpe_fixture(str(tmp_path))
    tok = gpt2_tokenizer(str(tmp_path))
    assert isinstance(tok, HFTokenizer) and tok.encode(" 12") == [vocab["Ġ"], vocab["12"]]
    with pytest.raises(ValueError, match="cannot run on tiktoken with the same ids"):
        gpt2_tokenizer(str(tmp_path), "tiktoken")
    # 2. The transformers-checked fixture, plus a token no merge makes ("Ġ" + a byte).
    folder = tmp_path / "extra"
    shutil.copytree(os.path.join(FIXTURES, "gpt2"), folder)
    assert isinstance(gpt2_tokenizer(str(folder)), TiktokenTokenizer)
    with open(folder / "vocab.json", encoding="utf-8") as f:
        vocab = json.load(f)
    assert "Ġ~" not in vocab
    vocab["Ġ~"] = len(vocab)
    with open(folder / "vocab.json", "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False)
    tok = gpt2_tokenizer(str(folder))
    assert isinstance(tok, HFTokenizer) and tok.encode(" ~") == [vocab["Ġ"], vocab["~"]]


def test_tiktoken_named_encodings(monkeypatch):
    tiktoken = pytest.importorskip("tiktoken")
    from jaxmodels.data.sources import DataNotFoundError
    from jaxmodels.data.tokenizers import gpt2_tokenizer
    with pytest.raises(ConfigError, match="unknown tiktoken encoding 'gpt5'.*cl100k_base"):
        build_tokenizer({"tokenizer": "tiktoken", "vocab_path": "gpt5"})

    def offline(name):
        raise ConnectionError("no network")
    monkeypatch.setattr(tiktoken, "get_encoding", offline)
    with pytest.raises(DataNotFoundError, match="'cl100k_base' encoding.*TIKTOKEN_CACHE_DIR"):
        build_tokenizer({"tokenizer": "tiktoken", "vocab_path": "cl100k_base"})
    # A loaded encoding (here the fixture's, standing in for the cached file): its EOT is eot.
    local = gpt2_tokenizer(os.path.join(FIXTURES, "gpt2"), "tiktoken").enc
    monkeypatch.setattr(tiktoken, "get_encoding", lambda name: local)
    tok = build_tokenizer({"tokenizer": "tiktoken", "vocab_path": "cl100k_base"})
    assert tok.vocab_size == local.n_vocab and tok.eot == tok.pad == local.eot_token and tok.bos is None
    assert tok.decode(tok.encode("Hello world!! <|endoftext|>")) == "Hello world!! <|endoftext|>"
    assert tok.token_id("<|endoftext|>") == local.eot_token and tok.token_id("<|im_end|>") is None
