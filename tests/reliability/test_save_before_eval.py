"""Defect 2: the loop evaluated before saving, so an eval that raised lost the step's
checkpoint and every re-run died at the same step. Now: save first; an eval that cannot
run is refused before step 0; one that fails later is reported and training goes on."""
import os

import pytest

from jaxmodels.config import ConfigError, load_config
from jaxmodels.train.checkpoint import Checkpointer
from jaxmodels.train.loop import train
from jaxmodels.train.metrics import read_metrics
from tests.reliability.images import make_folder
from tests.train.util import ROOT, toy_cfg

TASK = "tests.reliability.faulty_task:EvalFailsTask"


def test_failing_eval_is_reported_and_training_goes_on(tmp_path, capsys):
    workdir = str(tmp_path / "run")
    cfg = toy_cfg(task__name=TASK, train__steps=30)
    cfg.task.eval_fail_steps = (20,)
    train(cfg, workdir)
    assert Checkpointer(workdir).all_steps() == [10, 20, 30]
    rows = [r for r in read_metrics(os.path.join(workdir, "metrics.jsonl")) if r.get("split") == "val"]
    assert [r["step"] for r in rows] == [10, 20, 30]
    assert "eval exploded at step 20" in rows[1]["eval_error"] and "val_loss" in rows[2]
    assert "evaluation at step 20 failed" in capsys.readouterr().out


def test_eval_errors_raise_still_saves_the_step_first(tmp_path):
    workdir = str(tmp_path / "run")
    cfg = toy_cfg(task__name=TASK, train__steps=30, train__eval_errors="raise")
    cfg.task.eval_fail_steps = (20,)
    with pytest.raises(RuntimeError, match="eval exploded"):
        train(cfg, workdir)
    assert Checkpointer(workdir).all_steps() == [10, 20]  # step 20 is saved: a re-run moves on
    cfg.task.eval_fail_steps = ()
    train(cfg, workdir)
    rows = read_metrics(os.path.join(workdir, "metrics.jsonl"))
    assert [r["step"] for r in rows if r.get("split") == "val"] == [10, 20, 30]  # 20's eval redone


def test_val_split_smaller_than_eval_batch_is_refused_before_step_0(tmp_path):
    folder = str(tmp_path / "images")
    make_folder(folder, classes=2, per_class=20)  # 40 images: a val split of 4 < eval batch 8
    cfg = load_config(os.path.join(ROOT, "configs", "dit_small.py") + ":smoke",
                      ["data.source=folder", f"data.path={folder}", "data.image_size=16"])
    workdir = tmp_path / "run"
    with pytest.raises(ConfigError, match="evaluation cannot run: the val split has 4 examples.*batch of 8"):
        train(cfg, str(workdir))
    assert not (workdir / "checkpoints").exists() or not os.listdir(workdir / "checkpoints")
