"""Two CPU processes (2 forced host devices each) joined by jax.distributed (gloo collectives)
train the GPT smoke config on a data=2 x fsdp=2 mesh that spans both: the losses equal a
one-process one-device run; after kill -9 of both processes between checkpoints, re-running
both resumes to the same losses and bit-identical params."""
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from jaxmodels.config import load_config
from jaxmodels.train.checkpoint import Checkpointer, load_params
from jaxmodels.train.loop import train
from tests.train.test_resume_lm import KILL_AT_15, _losses
from tests.train.util import ROOT, bit_identical, max_abs_diff

SPEC = os.path.join(ROOT, "configs", "gpt_shakespeare_char.py") + ":smoke"
OVERRIDES = ["data.max_bytes=20000", "train.eval_every=0"]
MESH = ["mesh.data=2", "mesh.fsdp=2"]
ENV2 = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "PYTHONPATH": ROOT}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _start(workdir: str, kill_first_at_15: bool = False) -> list[subprocess.Popen]:
    port = _free_port()
    procs = []
    for pid in (0, 1):
        head = ["-c", KILL_AT_15] if (kill_first_at_15 and pid == 0) else ["-m", "launch.train"]
        cmd = [sys.executable, *head, "--config", SPEC, "--workdir", workdir, f"--coordinator=localhost:{port}",
               "--num_processes=2", f"--process_id={pid}", *[f"--config.{o}" for o in OVERRIDES + MESH]]
        procs.append(subprocess.Popen(cmd, cwd=ROOT, env=ENV2, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True))
    return procs


def _finish(procs, timeout: float = 900) -> list[str]:
    outs = []
    for p in procs:
        out, _ = p.communicate(timeout=timeout)
        outs.append(out)
    return outs


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("mp") / "straight")
    procs = _start(workdir)
    outs = _finish(procs)
    assert [p.returncode for p in procs] == [0, 0], outs[0][-3000:] + outs[1][-3000:]
    assert "(4 devices)" in outs[0]
    return workdir


@pytest.mark.slow
def test_two_processes_train_like_one(two_process_run, tmp_path):
    single = str(tmp_path / "single")
    train(load_config(SPEC, OVERRIDES), single)  # this process: one device
    got, ref = _losses(two_process_run), _losses(single)
    assert [s for s, _, _ in got] == [s for s, _, _ in ref] and len(got) >= 4
    np.testing.assert_allclose([x for _, x, _ in got if x is not None], [x for _, x, _ in ref if x is not None],
                               rtol=1e-5)
    assert max_abs_diff(load_params(two_process_run)[1], load_params(single)[1]) < 1e-5
    # only process 0 wrote files besides the checkpoints
    with open(os.path.join(two_process_run, "samples.txt")) as f:
        assert len(f.read().strip()) > 0
    data = [f for f in os.listdir(os.path.join(two_process_run, "checkpoints", "20", "data")) if f.endswith(".json")]
    assert sorted(data) == ["process_0-of-2.json", "process_1-of-2.json"]  # each process's data position


@pytest.mark.slow
def test_two_processes_resume_after_kill_9_of_both(two_process_run, tmp_path):
    killed = str(tmp_path / "killed")
    procs = _start(killed, kill_first_at_15=True)
    procs[0].wait(timeout=900)
    assert procs[0].returncode == -9
    if procs[1].poll() is None:  # process 1 waits for its peer in a collective: kill it too
        os.kill(procs[1].pid, signal.SIGKILL)
    procs[1].wait(timeout=60)
    time.sleep(0.5)
    assert Checkpointer(killed).all_steps() == [10]
    procs = _start(killed)
    outs = _finish(procs)
    assert [p.returncode for p in procs] == [0, 0], outs[0][-3000:] + outs[1][-3000:]
    assert "resumed from" in outs[0]
    assert _losses(killed) == _losses(two_process_run)
    assert bit_identical(load_params(killed)[1], load_params(two_process_run)[1])
