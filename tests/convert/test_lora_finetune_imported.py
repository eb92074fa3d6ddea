"""A LoRA fine-tune of an imported model lowers its loss on text it has not seen.

The whole user path, through the trainer: a byte-level GPT is pretrained on the embedded
corpus (Python's standard library source), exported to the Hugging Face GPT-2 layout
(launch.export_hf) and imported again as `init_from` (jaxmodels.convert.from_hf); then only
LoRA adapters train on Shakespeare (the packaged tinyshakespeare.txt), and the validation loss
on Shakespeare's held-out 10% is compared before (the same run with lr 0: adapters stay zero,
so it is the imported base) and after. BENCHMARKS.md ("LoRA fine-tune of an imported model")
has a longer run of the same recipe.
"""
import json
import os

import pytest

from jaxmodels.config import load_config
from jaxmodels.data.sources import packaged_corpus
from jaxmodels.train.loop import train
from launch import export_hf
from tests.train.util import ROOT

SPEC = os.path.join(ROOT, "configs", "gpt2_124m.py:smoke")
EVAL = ["train.eval_batches=8", "train.log_every=50"]


def steps(n: int) -> list[str]:
    return [f"train.steps={n}", f"train.eval_every={n}", f"train.checkpoint_every={n}"]


def last_val_loss(workdir: str) -> float:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    return [r for r in rows if "val_loss" in r][-1]["val_loss"]


@pytest.mark.slow
def test_lora_on_an_imported_gpt_lowers_the_loss_on_new_text(tmp_path):
    pretrained, hf = str(tmp_path / "pretrain"), str(tmp_path / "hf")
    train(load_config(SPEC, EVAL + steps(100)), pretrained)
    assert export_hf.main(["--workdir", pretrained, "--out", hf]) == 0

    lora = EVAL + ["init_from=" + hf, "model.adapters={'rank': 8, 'alpha': 16.0}"]
    frozen = ["optim.lr=0.0", "optim.min_lr=0.0"] + steps(1)
    # The import is the pretrained model: the same validation loss on its own corpus.
    train(load_config(SPEC, lora + frozen), str(tmp_path / "imported"))
    assert last_val_loss(str(tmp_path / "imported")) == pytest.approx(last_val_loss(pretrained), abs=1e-5)

    shakespeare = lora + ["data.source=file", "data.path=" + packaged_corpus("tinyshakespeare.txt"),
                          "data.max_bytes=200000"]
    train(load_config(SPEC, shakespeare + frozen), str(tmp_path / "before"))
    train(load_config(SPEC, shakespeare + steps(60)), str(tmp_path / "after"))
    before, after = last_val_loss(str(tmp_path / "before")), last_val_loss(str(tmp_path / "after"))
    assert after < before - 0.1, (before, after)
