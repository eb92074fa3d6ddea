"""Whole runs on the toy task: exact resume after kill -9, SIGTERM, NaN stop, damaged
checkpoints, shape-mismatch resume, load_params."""
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from jaxmodels.train.checkpoint import CheckpointMismatchError, Checkpointer, checkpoint_dir, load_params
from jaxmodels.train.loop import TrainingDivergedError, train
from jaxmodels.train.metrics import read_metrics
from tests.train.util import ROOT, TOY_CONFIG, bit_identical, toy_cfg

STEPS = 30


def _train_losses(workdir):
    rows = [r for r in read_metrics(os.path.join(workdir, "metrics.jsonl")) if "split" not in r]
    return [(r["step"], r["loss"], r["grad_norm"]) for r in rows]


def _val_losses(workdir):
    return [(r["step"], r["val_loss"]) for r in read_metrics(os.path.join(workdir, "metrics.jsonl"))
            if r.get("split") == "val"]


def _launch(workdir, *extra):
    cmd = [sys.executable, "-m", "launch.train", "--config", TOY_CONFIG + ":ema", "--workdir", str(workdir),
           f"--config.train.steps={STEPS}", "--config.mesh.cpu_devices=1", *extra]  # as the in-process runs
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for_checkpoint(proc, workdir, step, timeout=240):
    path = os.path.join(checkpoint_dir(workdir), str(step))
    deadline = time.time() + timeout
    while not os.path.isdir(path):
        if proc.poll() is not None:
            pytest.fail(f"training exited early:\n{proc.stdout.read()}")
        if time.time() > deadline:
            proc.kill()
            pytest.fail("no checkpoint appeared")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
    """The reference: STEPS steps without interruption (EMA on, so EMA resume is checked too)."""
    workdir = tmp_path_factory.mktemp("straight")
    train(toy_cfg("ema", train__steps=STEPS), str(workdir))
    return str(workdir)


def test_straight_run_learns_and_logs(straight_run):
    losses = _train_losses(straight_run)
    assert [s for s, _, _ in losses] == [5, 10, 15, 20, 25, 30]
    assert losses[-1][1] < losses[0][1] - 0.3  # the toy rule is learnable
    val = _val_losses(straight_run)
    assert [s for s, _ in val] == [10, 20, 30] and val[-1][1] < val[0][1]
    assert Checkpointer(straight_run).all_steps() == [10, 20, 30]


def test_exact_resume_after_kill_9(straight_run, tmp_path):
    workdir = str(tmp_path / "killed")
    # Slow data (not numbers) so the kill lands mid-run, after the step-10 checkpoint.
    proc = _launch(workdir, "--config.task.delay=0.15")
    _wait_for_checkpoint(proc, workdir, 10)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    steps_before = Checkpointer(workdir).all_steps()
    assert steps_before and steps_before[-1] < STEPS
    train(toy_cfg("ema", train__steps=STEPS), workdir)  # the same command again resumes
    assert _train_losses(workdir) == _train_losses(straight_run)  # identical floats
    assert _val_losses(workdir) == _val_losses(straight_run)
    for use_ema in (False, True):
        _, ref = load_params(straight_run, use_ema=use_ema)
        _, got = load_params(workdir, use_ema=use_ema)
        assert bit_identical(ref, got), f"use_ema={use_ema}"
    _, p = load_params(workdir, use_ema=False)
    _, e = load_params(workdir, use_ema=True)
    assert not bit_identical(p, e)


def test_sigterm_saves_and_exits_cleanly(tmp_path):
    workdir = str(tmp_path / "term")
    proc = _launch(workdir, "--config.task.delay=0.15")
    metrics = os.path.join(workdir, "metrics.jsonl")
    deadline = time.time() + 240
    while not (os.path.exists(metrics) and any(r["step"] >= 15 for r in read_metrics(metrics))):
        assert proc.poll() is None and time.time() < deadline, "run ended before step 15"
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    stopped_at = int(out.split("stopped by signal")[1].split("at step ")[1].split(";")[0])
    assert 15 <= stopped_at < STEPS
    assert Checkpointer(workdir).all_steps()[-1] == stopped_at  # saved where it stopped


def test_damaged_newest_checkpoint_falls_back(straight_run, tmp_path):
    workdir = str(tmp_path / "damaged")
    shutil.copytree(straight_run, workdir)
    newest = os.path.join(checkpoint_dir(workdir), "30", "state")
    for root, _, files in os.walk(newest):
        for f in files:
            os.remove(os.path.join(root, f))  # a finished checkpoint whose files went missing
    with pytest.warns(RuntimeWarning, match="checkpoint 30 .* damaged"):
        _, params20 = load_params(workdir, use_ema=False)
    assert not bit_identical(params20, load_params(straight_run, use_ema=False)[1])
    # Resuming falls back to step 20, sets 30 aside, and redoes steps 21..30 exactly.
    with pytest.warns(RuntimeWarning, match="checkpoint 30 .* damaged"):
        train(toy_cfg("ema", train__steps=STEPS), workdir)
    assert os.listdir(os.path.join(workdir, "damaged_checkpoints")) == ["30.0"]
    assert Checkpointer(workdir).all_steps() == [10, 20, 30]
    assert bit_identical(load_params(workdir)[1], load_params(straight_run)[1])
    assert _train_losses(workdir) == _train_losses(straight_run)


def test_resume_with_other_model_shapes_is_refused(straight_run, tmp_path):
    workdir = str(tmp_path / "mismatch")
    shutil.copytree(straight_run, workdir)
    with pytest.raises(CheckpointMismatchError) as e:
        train(toy_cfg("ema", train__steps=STEPS + 5, model__width=48), workdir)
    msg = str(e.value)
    assert "model.width: 32 in the checkpoint, 48 now" in msg
    assert "blocks/down/kernel: float32[2, 64, 32] in the checkpoint, float32[2, 96, 48] now" in msg
    assert "fresh --workdir" in msg


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    workdir = str(tmp_path / "nan")
    cfg = toy_cfg(train__steps=STEPS, task__nan_after=12)  # batch index 12 = step 13
    with pytest.raises(TrainingDivergedError, match="loss .*nan at step 13.*step 10"):
        train(cfg, workdir)
    assert Checkpointer(workdir).all_steps() == [10]
    _, params = load_params(workdir)
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(params))


def test_data_parallel_matches_single_device(straight_run, tmp_path):
    """2 (forced host) devices on mesh.data: batch split, state replicated, same numbers."""
    workdir = str(tmp_path / "dp")
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    cmd = [sys.executable, "-m", "launch.train", "--config", TOY_CONFIG + ":ema", "--workdir", workdir,
           f"--config.train.steps={STEPS}", "--config.train.micro_batches=2", "--config.memory.check=true"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got, ref = _train_losses(workdir), _train_losses(straight_run)
    assert [s for s, _, _ in got] == [s for s, _, _ in ref]
    np.testing.assert_allclose([l for _, l, _ in got], [l for _, l, _ in ref], rtol=1e-5)
    from tests.train.util import max_abs_diff
    assert max_abs_diff(load_params(workdir)[1], load_params(straight_run)[1]) < 1e-5
