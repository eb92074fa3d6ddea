"""launch.prepare: text / JSONL -> token shards, read back, resumed after kill -9, loaded by the LM data."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from jaxmodels.data.prepare import PrepareSpec, prepare
from jaxmodels.data.shards import ConcatTokens, read_shard_folder, shard_files
from jaxmodels.data.sources import LLMC_MAGIC, packaged_corpus, read_token_file
from jaxmodels.data.tokenizers import build_tokenizer

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
GPT2 = os.path.join(ROOT, "tests", "fixtures", "tokenizers", "gpt2")
SHAKESPEARE = packaged_corpus("tinyshakespeare.txt")


def all_tokens(folder):
    s = read_shard_folder(folder)
    return np.concatenate([s["val"][:], s["train"][:]]).astype(np.int64)


def test_prepare_reads_back_the_tokens_of_each_document(tmp_path):
    text = open(SHAKESPEARE, encoding="utf-8").read()[:60_000]
    (tmp_path / "a.txt").write_text(text, encoding="utf-8")
    # the last record is longer than 2 x chunk_bytes: cut at line starts, same ids as whole
    docs = ["First doc.", "Second, with\nnewlines\n\n", "héllo 世界", text[:20_000]]
    with open(tmp_path / "b.jsonl", "w", encoding="utf-8") as f:
        for d in docs:
            f.write(json.dumps({"text": d}) + "\n")
    tok = build_tokenizer({"tokenizer": "gpt2", "vocab_path": GPT2})
    expected = []
    for d in [text] + docs:  # a.txt whole (chunked at line starts: same ids), then each record
        expected += tok.encode(d) + [tok.eot]
    for fmt in ("llmc", "nanogpt"):
        out = tmp_path / f"out_{fmt}"
        m = prepare(PrepareSpec(inputs=[str(tmp_path / "a.txt"), str(tmp_path / "b.jsonl")], out_dir=str(out),
                                vocab_path=GPT2, fmt=fmt, shard_tokens=7000, val_tokens=3000,
                                chunk_bytes=4000, workers=2, progress=False))
        assert m["complete"] and m["num_tokens"] == len(expected)
        assert all_tokens(out).tolist() == expected
        first = shard_files(str(out), "val")[0]
        assert os.path.getsize(first) == (1024 if fmt == "llmc" else 0) + 2 * 3000
        header = np.fromfile(first, np.int32, count=3)
        assert (header.tolist() == [LLMC_MAGIC, 1, 3000]) == (fmt == "llmc")
        assert len(read_token_file(shard_files(str(out), "train")[0])) == 7000


def test_concat_tokens_slices_across_shards():
    parts = [np.arange(0, 5), np.arange(5, 7), np.arange(7, 20)]
    c = ConcatTokens(parts)
    full = np.arange(20)
    assert len(c) == 20 and c[3] == 3 and c[-1] == 19
    for a in range(20):
        for b in range(a, 21):
            assert c[a:b].tolist() == full[a:b].tolist()


def test_lm_data_reads_a_shard_folder(tmp_path):
    from jaxmodels.data.text import lm_data_config, load_splits, text_dataset
    prepare(PrepareSpec(inputs=[SHAKESPEARE], out_dir=str(tmp_path), tokenizer="byte", shard_tokens=300_000,
                        val_tokens=100_000, chunk_bytes=200_000, workers=1, progress=False))
    cfg = lm_data_config(source="tokens", path=str(tmp_path), tokenizer="byte", seq_len=64)
    splits, tok = load_splits(cfg)
    assert len(splits["val"]) == 100_000 and len(splits["train"]) == 1_115_394 - 100_000  # bytes: no EOT
    assert bytes(splits["train"][:20].astype(np.uint8)) == open(SHAKESPEARE, "rb").read()[100_000:100_020]
    batch = next(iter(text_dataset(cfg, "train", 4, seed=0, splits=splits)))
    assert batch["inputs"].shape == (4, 64) and (batch["inputs"][:, 1:] == batch["targets"][:, :-1]).all()


def test_kill_9_then_rerun_gives_identical_shards(tmp_path):
    inputs = []
    for i in range(3):  # 3.3 MB of bytes -> ~330 shards: the kill lands mid-run
        p = tmp_path / f"in{i}.txt"
        p.write_bytes(open(SHAKESPEARE, "rb").read())
        inputs.append(str(p))
    args = [sys.executable, "-m", "launch.prepare", *inputs, "--tokenizer", "byte", "--shard_tokens", "10000",
            "--chunk_bytes", "7000", "--workers", "2", "--no_progress"]
    env = dict(os.environ, PYTHONPATH=os.path.abspath(ROOT))
    killed = tmp_path / "killed"
    proc = subprocess.Popen(args + ["--out", str(killed)], cwd=ROOT, env=env)
    manifest = killed / "manifest.json"
    deadline = time.time() + 120
    while time.time() < deadline:
        if manifest.exists():
            try:
                if len(json.loads(manifest.read_text())["shards"]) >= 3:
                    break
            except (json.JSONDecodeError, KeyError):
                pass
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    state = json.loads(manifest.read_text())
    assert not state["complete"] and len(state["shards"]) >= 3  # really killed mid-run
    subprocess.run(args + ["--out", str(killed)], cwd=ROOT, env=env, check=True)
    clean = tmp_path / "clean"
    prepare(PrepareSpec(inputs=inputs, out_dir=str(clean), tokenizer="byte", shard_tokens=10000,
                        chunk_bytes=7000, workers=2, progress=False))
    names = sorted(f for f in os.listdir(clean) if f.endswith(".bin"))
    assert names == sorted(f for f in os.listdir(killed) if f.endswith(".bin")) and len(names) > 300
    for n in names:
        assert (clean / n).read_bytes() == (killed / n).read_bytes(), n


def test_rerun_with_other_settings_is_refused(tmp_path):
    (tmp_path / "a.txt").write_text("hello\n")
    spec = dict(inputs=[str(tmp_path / "a.txt")], out_dir=str(tmp_path / "o"), tokenizer="byte", progress=False,
                workers=1)
    prepare(PrepareSpec(**spec))
    from jaxmodels.config import ConfigError
    with pytest.raises(ConfigError, match="other settings"):
        prepare(PrepareSpec(**spec, shard_tokens=5))
