"""LM evaluation: perplexity and HellaSwag scoring on a hand-built bigram model, a
hand-checked 3-example file, and launch.evaluate on the LLaMA fixture against transformers' logits."""
import json
import math
import os

import jax.numpy as jnp
import numpy as np
import pytest

from jaxmodels.data.tokenizers import ByteTokenizer
from jaxmodels.tasks import lm_eval

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "fixtures")
HELLASWAG3 = os.path.join(FIXTURES, "lm_eval", "hellaswag3.jsonl")


class Bigram:
    """logits[t] = table[token t]: byte-level, every next byte uniform except after a space,
    where 'd', 'k', 'n' get logit 10, and after 'k', where 'k' gets logit 10."""

    def __init__(self):
        table = np.zeros((256, 256), np.float32)
        for c in "dkn":
            table[ord(" "), ord(c)] = 10.0
        table[ord("k"), ord("k")] = 10.0
        self.table = table

    def apply(self, variables, tokens_BT):
        return variables["params"]["table"][tokens_BT]


def bigram_params():
    m = Bigram()
    return m, {"table": jnp.asarray(m.table)}


def test_hellaswag_on_a_hand_checked_file():
    """Per-token losses: u = ln 256 = 5.545 for an unboosted byte; after a space each of d/k/n
    costs ln((3e^10 + 253) / e^10) = 1.0998, any other byte 11.10; 'k' after 'k' 0.0115.
      ex 0 "ab": " d" sums u + 1.0998, the others u + 11.10           -> d (label 1) by sum and mean
      ex 1 "q":  " n" = u + 1.0998 = 6.645 (mean 3.32); " kkkk" = u + 1.0998 + 3 x 0.0115 = 6.680
                 (mean 1.336)                                            -> sum picks n (0), mean kkkk (1 = label)
      ex 2 "zz": " k" is cheapest                                        -> 1, label 0: wrong both ways
    acc = 1/3, acc_norm = 2/3."""
    model, params = bigram_params()
    tok = ByteTokenizer()
    examples = lm_eval.read_hellaswag(HELLASWAG3)
    s = lm_eval.score_example(model, params, tok, examples[1])
    u, boosted, kk = math.log(256), math.log(3 + 253 * math.exp(-10)), math.log(1 + 255 * math.exp(-10))
    np.testing.assert_allclose(s["sum"], [u + boosted, u + boosted + 3 * kk], rtol=1e-5)
    np.testing.assert_allclose(s["mean"], [(u + boosted) / 2, (u + boosted + 3 * kk) / 5], rtol=1e-5)
    r = lm_eval.hellaswag(model, params, tok, examples)
    assert r == {"acc": pytest.approx(1 / 3), "acc_norm": pytest.approx(2 / 3), "examples": 3}


def test_perplexity_equals_the_mean_bigram_loss_for_any_window():
    model, params = bigram_params()
    tokens = np.frombuffer(b"a kkk b nd k q kkkkk zz d " * 7, np.uint8).astype(np.uint16)
    logp = model.table - np.log(np.exp(model.table).sum(-1, keepdims=True))
    expected = -np.mean([logp[a, b] for a, b in zip(tokens[:-1], tokens[1:])])
    for seq_len, batch in [(7, 3), (16, 8), (1000, 2)]:
        r = lm_eval.perplexity(model, params, tokens, seq_len, batch)
        assert r["tokens"] == len(tokens) - 1
        assert r["loss"] == pytest.approx(expected, rel=1e-5) and r["ppl"] == pytest.approx(math.exp(expected), rel=1e-5)


def test_launch_evaluate_perplexity_matches_transformers_logits(tmp_path, capsys):
    from launch import evaluate
    folder = os.path.join(FIXTURES, "llama", "llama")
    ref = np.load(os.path.join(folder, "reference.npz"))
    tokens, logits = ref["tokens"][0], ref["logits"][0].astype(np.float64)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    expected = -np.mean(logp[np.arange(len(tokens) - 1), tokens[1:]])
    path = tmp_path / "val.bin"
    tokens.astype(np.uint16).tofile(path)  # nanoGPT's bare uint16 format
    hs = tmp_path / "hs.jsonl"
    hs.write_text(json.dumps({"ctx": "w1 w2", "endings": ["w3", "w4 w5", "w6"], "label": 2}) + "\n")
    assert evaluate.main(["--hf", folder, "--tokens", str(path), "--hellaswag", str(hs), "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["val_loss"] == pytest.approx(expected, rel=1e-4) and out["tokens"] == len(tokens) - 1
    assert out["hellaswag_examples"] == 1 and out["hellaswag_acc_norm"] in (0.0, 1.0)


def test_bad_hellaswag_file_names_the_fields(tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_text('{"ctx": "a"}\n')
    with pytest.raises(Exception, match="endings"):
        lm_eval.read_hellaswag(str(p))
