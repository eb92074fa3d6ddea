"""Defect 1: two trainers on one workdir. The second is refused naming the holder; a lock
left by a killed run is taken over; readers never need the lock."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from jaxmodels.train.checkpoint import load_params
from jaxmodels.train.loop import train
from tests.train.util import ROOT, TOY_CONFIG, toy_cfg


LOCK_NAME = "train.lock"  # (a literal, so the behaviour tests also run against code without the lock)


def _launch(workdir, *extra):
    cmd = [sys.executable, "-m", "launch.train", "--config", TOY_CONFIG, "--workdir", str(workdir), *extra]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_second_run_on_same_workdir_is_refused(tmp_path):
    workdir = tmp_path / "run"
    # Slow data: >= 200 s of training, so the first run is still going however slowly the
    # second one starts on a loaded machine (it is stopped by SIGTERM below).
    first = _launch(workdir, "--config.train.steps=2000", "--config.task.delay=0.1")
    lock = workdir / LOCK_NAME
    metrics = workdir / "metrics.jsonl"
    deadline = time.time() + 240
    while not (metrics.exists() and metrics.stat().st_size > 0):  # first run is training
        assert first.poll() is None and time.time() < deadline, first.stdout.read() if first.poll() is not None else "slow"
        time.sleep(0.05)
    try:
        # Another config on the same workdir: refused at once, naming the first run's pid.
        second = subprocess.run([sys.executable, "-m", "launch.train", "--config", TOY_CONFIG, "--workdir",
                                 str(workdir), "--config.train.steps=50", "--config.optim.lr=0.01"],
                                cwd=ROOT, capture_output=True, text=True, timeout=240)
        assert second.returncode == 2, second.stdout + second.stderr
        assert f"pid {first.pid}" in second.stderr and "in use by another training run" in second.stderr
        assert json.loads(lock.read_text())["pid"] == first.pid
    finally:
        first.send_signal(signal.SIGTERM)
        out, _ = first.communicate(timeout=120)
    assert first.returncode == 0, out
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    steps = [r["step"] for r in rows if "split" not in r]
    assert steps == sorted(set(steps))  # one run's lines only: none doubled
    assert lock.read_text() == ""  # released on exit


def test_lock_is_exclusive_readers_skip_it_and_errors_release_it(tmp_path):
    from jaxmodels.train.lock import WorkdirLock, WorkdirLockedError
    workdir = str(tmp_path / "w")
    train(toy_cfg(train__steps=2, train__eval_every=0), workdir)
    with WorkdirLock(workdir):  # as if a run were training here
        with pytest.raises(WorkdirLockedError, match=f"pid {os.getpid()}"):
            train(toy_cfg(train__steps=4), workdir)
        cfg, params = load_params(workdir)  # launch.sample / generate / evaluate read without it
        assert params is not None
    # an exception inside train releases the lock: the next call may run
    with pytest.raises(Exception):
        train(toy_cfg(train__steps=2, model__remat="bogus"), workdir)
    train(toy_cfg(train__steps=4, train__eval_every=0), workdir)


def test_stale_lock_of_a_killed_run_is_taken_over(tmp_path, capsys):
    workdir = tmp_path / "stale"
    proc = _launch(workdir, "--config.train.steps=200", "--config.task.delay=0.1")
    deadline = time.time() + 240
    while not ((workdir / LOCK_NAME).exists() and (workdir / LOCK_NAME).read_text()):
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert json.loads((workdir / LOCK_NAME).read_text())["pid"] == proc.pid  # left behind
    train(toy_cfg(train__steps=3, train__eval_every=0), str(workdir))
    assert f"taking over the lock of a run that no longer holds it: pid {proc.pid}" in capsys.readouterr().out
