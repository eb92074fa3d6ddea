"""Instruction data: Alpaca template, loss mask on the response only, padding / packing,
JSON and JSONL files, and exact resume of the grain iterator."""
from __future__ import annotations

import json

import numpy as np
import pytest

from jaxmodels.data import instruct
from jaxmodels.data.tokenizers import ByteTokenizer

TOK = ByteTokenizer()


class EosByteTokenizer(ByteTokenizer):
    """Bytes plus an EOS id 0 (a NUL byte never occurs in the examples)."""
    eot = 0
    pad = 0


def test_alpaca_template_text():
    with_input = {"instruction": "Add.", "input": "1 + 2", "output": "3"}
    assert instruct.prompt_text(with_input).endswith("### Instruction:\nAdd.\n\n### Input:\n1 + 2\n\n### Response:\n")
    assert instruct.prompt_text(with_input).startswith("Below is an instruction that describes a task, paired with an input")
    no_input = {"instruction": "Say hi.", "input": "", "output": "hi"}
    text = instruct.prompt_text(no_input)
    assert "### Input" not in text and text.endswith("### Instruction:\nSay hi.\n\n### Response:\n")


@pytest.mark.parametrize("packing", [False, True])
def test_mask_covers_exactly_the_responses(packing):
    examples = instruct.embedded_examples(20)
    cfg = {"seq_len": 64, "template": "short", "packing": packing}
    tok = EosByteTokenizer()
    encoded = [instruct.encode_example(e, tok, "short") for e in examples]
    build = instruct.packed_rows if packing else instruct.padded_rows
    rows = build(encoded, cfg["seq_len"], pad=0)
    assert rows["inputs"].shape[1] == rows["targets"].shape[1] == rows["mask"].shape[1] == 64
    # Every response byte + EOS is a target exactly once; nothing else is.
    expected = b"".join(e["output"].encode() + b"\0" for e in examples)
    assert bytes(rows["targets"][rows["mask"] == 1].astype(np.uint8)) == expected
    # targets are inputs shifted by one within each row
    np.testing.assert_array_equal(rows["targets"][:, :-1], rows["inputs"][:, 1:])
    if packing:
        assert len(rows["inputs"]) < len(examples)  # packed: fewer rows than examples
    else:
        assert len(rows["inputs"]) == len(examples)


def test_long_examples_are_truncated_to_seq_len():
    example = {"instruction": "Repeat.", "input": "", "output": "x" * 100}
    rows = instruct.padded_rows([instruct.encode_example(example, TOK, "short")], 16, pad=0)
    assert rows["inputs"].shape == (1, 16)
    prompt_len = len(instruct.prompt_text(example, "short"))
    assert rows["mask"].sum() == 16 - (prompt_len - 1)


def test_json_and_jsonl_files_agree(tmp_path):
    examples = instruct.embedded_examples(12)
    (tmp_path / "a.json").write_text(json.dumps(examples))
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps(e) for e in examples))
    assert instruct.read_examples(str(tmp_path / "a.json")) == examples
    assert instruct.read_examples(str(tmp_path / "a.jsonl")) == examples
    (tmp_path / "bad.json").write_text(json.dumps([{"prompt": "x"}]))
    with pytest.raises(Exception, match="instruction"):
        instruct.read_examples(str(tmp_path / "bad.json"))


def test_split_is_disjoint_and_iterator_resumes_exactly():
    cfg = {"seq_len": 64, "template": "short", "num_threads": 1, "prefetch": 2}
    train = instruct.instruct_rows(cfg, "train", TOK)
    val = instruct.instruct_rows(cfg, "val", TOK)
    assert len(train["inputs"]) + len(val["inputs"]) == 64 and len(val["inputs"]) == 6
    train_set = {bytes(r.astype(np.uint8)) for r in train["inputs"]}
    assert not any(bytes(r.astype(np.uint8)) in train_set for r in val["inputs"])
    it = iter(instruct.instruct_dataset(cfg, "train", 4, seed=3, tokenizer=TOK))
    for _ in range(5):
        next(it)
    state = it.get_state()
    expected = [next(it) for _ in range(20)]  # crosses an epoch boundary (58 rows / 4)
    it2 = iter(instruct.instruct_dataset(cfg, "train", 4, seed=3, tokenizer=TOK))
    it2.set_state(state)
    for want in expected:
        got = next(it2)
        for k in ("inputs", "targets", "mask"):
            np.testing.assert_array_equal(got[k], want[k])
    assert expected[0]["inputs"].dtype == np.int32 and expected[0]["mask"].dtype == np.float32
