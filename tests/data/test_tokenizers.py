"""Tokenizers: char / byte / GPT-2 byte-level BPE (on a handmade vocab) / tokenizer.json."""
import json
import os

import pytest

from jaxmodels.config import ConfigError
from jaxmodels.data.gpt2_bpe import GPT2BPE, byte_to_unicode, pretokenize
from jaxmodels.data.tokenizers import ByteTokenizer, CharTokenizer, build_tokenizer

SHAKESPEARE = os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "data", "tinyshakespeare.txt")

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


@pytest.mark.skipif(not os.path.isfile(SHAKESPEARE), reason="shared tinyshakespeare.txt not present")
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


def test_byte_to_unicode_is_a_bijection_onto_printables():
    table = byte_to_unicode()
    assert len(table) == 256 and len(set(table.values())) == 256
    assert table[ord("A")] == "A" and table[ord(" ")] == "Ġ" and table[ord("\n")] == "Ċ"


def test_pretokenize_splits_like_gpt2_pattern():
    assert pretokenize("Hello world!! It's 42") == ["Hello", " world", "!!", " It", "'s", " 42"]
    assert pretokenize("a  b") == ["a", " ", " b"]            # \s+(?!\S) leaves one space
    assert pretokenize("a\n\nb ") == ["a", "\n", "\n", "b", " "]  # lone \n before a word
    assert pretokenize("x   ") == ["x", "   "]
    assert pretokenize("I'M") == ["I", "'", "M"]             # contractions are case-sensitive
    assert pretokenize("x2½ ٣") == ["x", "2½", " ٣"]          # \\p{N} is every number, not just 0-9
    for text in TRICKY + fuzz_strings():
        assert "".join(pretokenize(text)) == text


# A tiny handmade GPT-2-style BPE: the 256 byte symbols, then these merges in rank order.
MERGES = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("i", "n"), ("Ġ", "a"), ("e", "r"), ("Ġ", "w"),
          ("o", "r"), ("l", "l"), ("Ġw", "or"), ("Ġwor", "l"), ("Ġworl", "d"), ("in", "g"),
          ("'", "s"), ("1", "2"), ("Ġ", "1"), ("Ġ1", "2"), ("h", "é"), ("Ã", "©"), ("Ġ", "Ġ")]


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
    assert isinstance(tok, GPT2BPE)
    assert tok.vocab_size == len(vocab) and tok.eot == vocab["<|endoftext|>"]
    assert tok.encode(" the world") == [vocab["Ġthe"], vocab["Ġworld"]]
    assert tok.encode("the") == [vocab["t"], vocab["he"]]      # "Ġt" needs the space
    # "12" (rank 14) merges before "Ġ1" (rank 15), after which "Ġ"+"12" has no merge.
    assert tok.encode(" 123") == [vocab["Ġ"], vocab["12"], vocab["3"]]
    assert tok.encode(" 1") == [vocab["Ġ1"]]
    assert tok.encode("é") == [vocab["Ã©"]]                  # UTF-8 bytes C3 A9, merged
    for text in TRICKY:
        assert tok.decode(tok.encode(text)) == text


def fuzz_strings(n=300, seed=0):
    """Random strings over an alphabet chosen to hit every branch of the GPT-2 pattern."""
    import random
    alphabet = list("aAsStTrReEvVmMlLdD'’ \t\n\r\x0b\x0c\x1c\x85\u00a0\u3000 0123456789½Ⅻ٣.,!?-_é世界🙂") + ["  ", "'s", "'ll", " 's"]
    rnd = random.Random(seed)
    return ["".join(rnd.choice(alphabet) for _ in range(rnd.randint(0, 30))) for _ in range(n)]


def test_gpt2_bpe_matches_huggingface_tokenizers(tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    write_bpe_fixture(str(tmp_path))
    ours = build_tokenizer({"tokenizer": "gpt2", "vocab_path": str(tmp_path / "vocab.json")})
    bpe = tokenizers.models.BPE.from_file(str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt"))
    ref = tokenizers.Tokenizer(bpe)
    ref.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    table = byte_to_unicode()
    for text in TRICKY + fuzz_strings():
        ref_words = [w for w, _ in ref.pre_tokenizer.pre_tokenize_str(text)]
        our_words = ["".join(table[b] for b in w.encode("utf-8")) for w in pretokenize(text)]
        assert our_words == ref_words, text
        assert ours.encode(text) == ref.encode(text).ids, text


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
    with pytest.raises(ConfigError, match="char, byte, gpt2, hf"):
        build_tokenizer({"tokenizer": "sentencepiece"})


def test_hf_tokenizer_without_the_library_names_the_extra(monkeypatch, tmp_path):
    import sys
    monkeypatch.setitem(sys.modules, "tokenizers", None)  # makes `import tokenizers` fail
    with pytest.raises(ImportError, match=r"pip install jaxmodels\[tokenizers\]"):
        build_tokenizer({"tokenizer": "hf", "vocab_path": str(tmp_path)})
