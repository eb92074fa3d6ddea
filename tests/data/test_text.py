"""Text pipeline: sources, token cache, fixed split, random windows, exact resume, tfds mock."""
import os
import time

import numpy as np
import pytest

from jaxmodels.data import sources, text
from jaxmodels.data.text import (WindowSource, lm_data_config, load_tokens, split_tokens,
                                 text_dataset)


def take(it, n):
    return [next(it) for _ in range(n)]


@pytest.fixture
def corpus(tmp_path):
    """A folder of two small text files and a data config reading it char-level."""
    folder = tmp_path / "corpus"
    folder.mkdir()
    (folder / "b.txt").write_text("the second file. " * 40)
    (folder / "a.txt").write_text("First file, with some words! " * 40)
    (folder / "skip.bin").write_bytes(b"\x00\x01")
    cfg = lm_data_config(source="file", path=str(folder), tokenizer="char", seq_len=16,
                         cache_dir=str(tmp_path / "cache"), num_threads=1, prefetch=2)
    return folder, cfg


def test_file_folder_is_read_in_sorted_order(corpus):
    folder, cfg = corpus
    docs = sources.read_documents(cfg)
    assert docs == [(folder / "a.txt").read_text(), (folder / "b.txt").read_text()]


def test_missing_file_error_names_the_fix(tmp_path):
    cfg = lm_data_config(source="file", path=str(tmp_path / "nope.txt"), path_help="Get it from X.")
    with pytest.raises(FileNotFoundError, match="nope.txt.*Get it from X"):
        sources.read_documents(cfg)


def test_embedded_corpus_is_sorted_stdlib_capped():
    cfg = lm_data_config(source="embedded", max_bytes=100_000)
    paths = sources.embedded_paths(100_000)
    names = [os.path.basename(p) for p in paths]
    assert names == sorted(names) and all(n.endswith(".py") for n in names)
    sizes = [os.path.getsize(p) for p in paths]
    assert sum(sizes[:-1]) < 100_000 <= sum(sizes)  # stops right after crossing the cap
    docs = sources.read_documents(cfg)
    assert len(docs) == len(paths) and sources.read_documents(cfg) == docs


def test_tokens_are_cached_and_keyed_by_tokenizer(corpus, monkeypatch):
    folder, cfg = corpus
    tokens, tok = load_tokens(cfg)
    expected = tok.encode((folder / "a.txt").read_text() + (folder / "b.txt").read_text())
    np.testing.assert_array_equal(tokens, expected)
    assert tokens.dtype == np.uint16

    def no_reading(_):
        raise AssertionError("corpus re-read despite the cache")

    monkeypatch.setattr(text, "read_documents", no_reading)
    cached, tok2 = load_tokens(cfg)
    np.testing.assert_array_equal(cached, tokens)
    assert tok2.chars == tok.chars
    monkeypatch.undo()
    byte_cfg = lm_data_config(**dict(cfg.to_dict(), tokenizer="byte"))
    byte_tokens, _ = load_tokens(byte_cfg)  # another key: tokenized afresh
    assert byte_tokens[0] == ord("F") and len(os.listdir(cfg.cache_dir)) == 4
    # Editing the corpus changes its fingerprint: the cache is not reused.
    (folder / "a.txt").write_text("changed")
    assert len(load_tokens(cfg)[0]) != len(tokens)


def test_split_is_first_90_percent():
    tokens = np.arange(1000)
    np.testing.assert_array_equal(split_tokens(tokens, "train"), np.arange(900))
    np.testing.assert_array_equal(split_tokens(tokens, "val"), np.arange(900, 1000))
    assert len(split_tokens(np.arange(1115394), "train")) == 1003854  # nanoGPT's numbers


def test_windows_are_shifted_random_and_deterministic():
    tokens = np.arange(5000, dtype=np.uint16)
    src = WindowSource(tokens, seq_len=16, seed=3)
    ex = src[7]
    np.testing.assert_array_equal(ex["targets"][:-1], ex["inputs"][1:])
    assert ex["inputs"].dtype == np.int32 and ex["mask"].dtype == np.float32 and ex["mask"].sum() == 16
    offsets = [src.offset(i) for i in range(2000)]
    assert offsets == [WindowSource(tokens, 16, seed=3).offset(i) for i in range(2000)]
    assert offsets != [WindowSource(tokens, 16, seed=4).offset(i) for i in range(2000)]
    assert min(offsets) >= 0 and max(offsets) <= 5000 - 17
    assert len(set(offsets)) > 1500  # spread over the corpus, not a few positions
    assert np.mean(offsets) == pytest.approx((5000 - 17) / 2, rel=0.1)


def test_train_batches_come_from_train_split_and_resume_exactly(corpus):
    _, cfg = corpus
    tokens, _ = load_tokens(cfg)
    n_train = len(split_tokens(tokens, "train"))
    it = iter(text_dataset(cfg, "train", 4, seed=0))
    first = take(it, 3)
    for b in first:
        assert b["inputs"].shape == (4, 16) and b["targets"].dtype == np.int32
        assert b["mask"].shape == (4, 16) and b["mask"].dtype == np.float32
        np.testing.assert_array_equal(b["targets"][:, :-1], b["inputs"][:, 1:])
    # Every window is a substring of the train split.
    train_str = tokens[:n_train].astype(np.int32).tobytes()
    for row in first[0]["inputs"]:
        assert row.astype(np.int32).tobytes() in train_str
    state = it.get_state()
    expected = take(it, 2)
    # Same seed, fresh iterator: the same stream; restored state: the exact next batches.
    again = take(iter(text_dataset(cfg, "train", 4, seed=0)), 3)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a["inputs"], b["inputs"])
    resumed = iter(text_dataset(cfg, "train", 4, seed=0))
    resumed.set_state(state)
    for a, b in zip(expected, take(resumed, 2)):
        np.testing.assert_array_equal(a["inputs"], b["inputs"])
    other = next(iter(text_dataset(cfg, "train", 4, seed=1)))
    assert not np.array_equal(other["inputs"], first[0]["inputs"])


def test_val_is_finite_fixed_and_from_val_split(corpus):
    _, cfg = corpus
    tokens, _ = load_tokens(cfg)
    val_str = split_tokens(tokens, "val").astype(np.int32).tobytes()
    batches = list(text_dataset(cfg, "val", 4, seed=0))
    expected_windows = max(4, len(split_tokens(tokens, "val")) // 16)
    assert len(batches) == expected_windows // 4
    for row in batches[0]["inputs"]:
        assert row.astype(np.int32).tobytes() in val_str
    again = list(text_dataset(cfg, "val", 4, seed=0))
    np.testing.assert_array_equal(batches[-1]["targets"], again[-1]["targets"])


def test_tfds_mock_source_needs_no_network(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    cfg = lm_data_config(source="tfds", tfds_name="tiny_shakespeare", tfds_split="train",
                         tfds_text_key="text", tokenizer="byte", seq_len=8,
                         cache_dir=str(tmp_path / "cache"), num_threads=1, prefetch=2)
    with tfds.testing.mock_data(num_examples=4, policy=tfds.testing.MockPolicy.USE_CODE):
        mocked = tfds.data_source("tiny_shakespeare", split="train")
        expected = [mocked[i]["text"] for i in range(len(mocked))]
        expected = [t.decode() if isinstance(t, bytes) else t for t in expected]
        docs = sources.read_documents(cfg)
        assert docs == expected and len(docs) == 4
        tokens, _ = load_tokens(cfg)
        np.testing.assert_array_equal(tokens, np.frombuffer("".join(docs).encode(), np.uint8))
        batch = next(iter(text_dataset(cfg, "train", 2, seed=0)))
        assert batch["inputs"].shape == (2, 8)


def test_tfds_not_prepared_fails_fast_with_the_fix(tmp_path):
    pytest.importorskip("tensorflow_datasets")
    cfg = lm_data_config(source="tfds", tfds_name="tiny_shakespeare", tfds_data_dir=str(tmp_path))
    start = time.time()
    with pytest.raises(FileNotFoundError, match="tfds build tiny_shakespeare.*data.source=file"):
        sources.read_documents(cfg)
    assert time.time() - start < 20  # no download attempt (offline it retries for minutes)


def test_pretokenized_token_files(tmp_path):
    from jaxmodels.data.sources import LLMC_MAGIC, read_token_file
    from jaxmodels.data.text import load_splits

    # nanoGPT's layout: a folder with raw uint16 train.bin and val.bin.
    nano = tmp_path / "nano"
    nano.mkdir()
    np.arange(3000, dtype=np.uint16).tofile(nano / "train.bin")
    np.arange(50000, 50500, dtype=np.uint16).tofile(nano / "val.bin")
    cfg = lm_data_config(source="tokens", path=str(nano), tokenizer="gpt2", vocab_path=str(tmp_path / "none"),
                         seq_len=8, num_threads=1)
    splits, tokenizer = load_splits(cfg)
    assert tokenizer is None  # no vocab files: samples show ids, training still works
    np.testing.assert_array_equal(splits["val"], np.arange(50000, 50500))
    batch = next(iter(text_dataset(cfg, "val", 2, seed=0, splits=splits)))
    assert batch["inputs"].min() >= 50000 and batch["inputs"].dtype == np.int32
    # llm.c's shard: 256 int32 header (magic, version, count) then uint16 tokens.
    header = np.zeros(256, np.int32)
    header[:3] = (LLMC_MAGIC, 1, 700)
    with open(tmp_path / "shard.bin", "wb") as f:
        f.write(header.tobytes() + np.arange(700, dtype=np.uint16).tobytes())
    np.testing.assert_array_equal(read_token_file(str(tmp_path / "shard.bin")), np.arange(700))
    # One .npy file: the usual 90/10 split.
    np.save(tmp_path / "all.npy", np.arange(1000, dtype=np.uint32))
    splits, _ = load_splits(lm_data_config(source="tokens", path=str(tmp_path / "all.npy"), tokenizer="byte"))
    assert len(splits["train"]) == 900 and splits["val"][0] == 900


def test_bpe_corpus_separates_documents_with_eot(corpus, tmp_path):
    from .test_tokenizers import write_bpe_fixture

    folder, cfg = corpus
    vocab_dir = tmp_path / "gpt2"
    vocab_dir.mkdir()
    vocab = write_bpe_fixture(str(vocab_dir))
    bpe_cfg = lm_data_config(**dict(cfg.to_dict(), tokenizer="gpt2", vocab_path=str(vocab_dir)))
    tokens, tok = load_tokens(bpe_cfg)
    eot = vocab["<|endoftext|>"]
    expected = (tok.encode((folder / "a.txt").read_text()) + [eot]
                + tok.encode((folder / "b.txt").read_text()) + [eot])
    np.testing.assert_array_equal(tokens, expected)
    assert tok.eot == eot and tokens.dtype == np.uint16


def test_tiny_shakespeare_ships_in_the_package_and_is_the_default_corpus():
    from jaxmodels.config import load_config
    from jaxmodels.data.sources import packaged_corpus
    path = packaged_corpus("tinyshakespeare.txt")
    assert os.path.getsize(path) == 1_115_394  # char-rnn / nanoGPT input.txt, byte for byte
    assert load_config("configs/gpt_shakespeare_char.py").data.path == path
