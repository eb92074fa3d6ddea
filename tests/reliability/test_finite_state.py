"""Defect 4: the NaN check read step s's loss and gradient (made by the params before the
update) while checkpoint s holds the params after it, so with lr=1e39 checkpoint 1 was all
inf and kept as "last good". Now the jitted step checks the updated state, nothing
non-finite is saved, and resuming with the advised fix works. Plus the llm.c-style option:
skip an update whose loss is a z-score outlier (or whose state is not finite), and roll back
after K skipped steps in a row."""
import os

import jax
import numpy as np
import pytest

from jaxmodels.train.checkpoint import Checkpointer, load_params
from jaxmodels.train.loop import TrainingDivergedError, train
from jaxmodels.train.metrics import read_metrics
from tests.train.util import bit_identical, toy_cfg

SPIKY = "tests.reliability.faulty_task:SpikyTask"


def _all_finite(tree):
    return all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(tree))


def _rows(workdir):
    return [r for r in read_metrics(os.path.join(workdir, "metrics.jsonl")) if "split" not in r]


@pytest.mark.parametrize("lr", [1e39, 1e5])
def test_no_checkpoint_is_ever_non_finite_and_the_advised_fix_resumes(tmp_path, lr):
    workdir = str(tmp_path / "run")
    crazy = dict(optim__lr=lr, optim__warmup_steps=0, optim__clip_norm=0.0, train__checkpoint_every=1,
                 train__eval_every=0, train__log_every=1, train__steps=20)
    with pytest.raises(TrainingDivergedError, match="Lower optim.lr"):
        train(toy_cfg(**crazy), workdir)
    kept = Checkpointer(workdir).all_steps()
    for step in kept:
        assert _all_finite(load_params(workdir, use_ema=False, step=step)[1]), f"checkpoint {step}"
    # The advice: a lower lr. The same workdir resumes (or starts over) and trains to the end.
    train(toy_cfg(**{**crazy, "optim__lr": 3e-3}), workdir)
    assert Checkpointer(workdir).all_steps()[-1] == 20
    assert _all_finite(load_params(workdir, use_ema=False)[1])
    assert all(np.isfinite(r["loss"]) for r in _rows(workdir) if r["step"] > (kept[-1] if kept else 0))


def test_outlier_loss_update_is_skipped_exactly(tmp_path):
    """A batch whose loss is 1000x: its update is dropped (params bit-identical to not taking
    the step), and the run goes on."""
    common = dict(task__name=SPIKY, train__skip_loss_z=4.0, train__skip_window=8, train__eval_every=0,
                  train__log_every=1, optim__decay_steps=100)  # same lr schedule at 20 and 21 steps
    spiked = str(tmp_path / "spiked")
    cfg = toy_cfg(train__steps=21, **common)
    cfg.task.spike_batches, cfg.task.spike_scale = (20,), 1000.0
    train(cfg, spiked)
    rows = _rows(spiked)
    assert [r["step"] for r in rows if r["skipped"]] == [21] and rows[-1]["loss_z"] > 4.0
    reference = str(tmp_path / "reference")
    train(toy_cfg(train__steps=20, **common), reference)
    assert bit_identical(load_params(spiked, use_ema=False)[1], load_params(reference, use_ema=False)[1])


def test_non_finite_steps_are_skipped_then_rolled_back(tmp_path, capsys):
    workdir = str(tmp_path / "run")
    cfg = toy_cfg(task__name=SPIKY, train__steps=30, train__skip_loss_z=4.0, train__skip_window=8,
                  train__rollback_after=3, train__eval_every=0, train__log_every=1)
    cfg.task.spike_batches = (14, 15, 16)  # steps 15-17 have NaN losses
    train(cfg, workdir)
    out = capsys.readouterr().out
    assert "3 steps in a row skipped by step 17: rolled back the params and optimizer state to checkpoint 10" in out
    rows = _rows(workdir)
    assert [r["step"] for r in rows if r["skipped"]] == [15, 16, 17] and rows[-1]["step"] == 30
    assert _all_finite(load_params(workdir, use_ema=False)[1])
