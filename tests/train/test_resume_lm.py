"""Exact resume on the real LM smoke configs (GPT and the recurrent family): a run SIGKILLed
(by itself, at a fixed step between two checkpoints) and re-run gives the same logged losses
and bit-identical params; the loss falls and the run ends by generating text."""
import os
import subprocess
import sys

import pytest

from jaxmodels.train.checkpoint import Checkpointer, load_params
from jaxmodels.train.metrics import read_metrics
from tests.train.util import ROOT, bit_identical

# The default run resumes one attention and one recurrent family (30-50 CPU-s each); the
# trainer's resume path is the same for all, so the other families run with -m slow.
SMOKE_CONFIGS = ["gpt_shakespeare_char"] + [
    pytest.param(name, marks=pytest.mark.slow)
    for name in ("rwkv4_169m", "moe_gpt", "mamba_130m", "rwkv7_l12_d768", "retnet_base", "bitnet_b158")]
OVERRIDES = ["data.max_bytes=20000", "train.eval_every=0"]  # eval (and sampling) at the end only

# Runs launch.train, SIGKILLing itself right after logging step 15 (checkpoints: 10, 20),
# once the async step-10 save has landed on disk.
KILL_AT_15 = """
import os, signal, sys, time
import jaxmodels.train.metrics as m
write = m.MetricsWriter.write
def write_then_die(self, step, metrics):
    write(self, step, metrics)
    if step == 15:
        done = os.path.join(os.path.dirname(self.path), "checkpoints", "10")
        deadline = time.time() + 120
        while not os.path.isdir(done) and time.time() < deadline:
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGKILL)
m.MetricsWriter.write = write_then_die
from launch.train import main
sys.exit(main(sys.argv[1:]))
"""


def _losses(workdir):
    return [(r["step"], r.get("loss"), r.get("val_loss")) for r in read_metrics(os.path.join(workdir, "metrics.jsonl"))]


def _launch(spec: str, workdir: str, program: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *program, "--config", spec + ":smoke", "--workdir", workdir,
                           *[f"--config.{o}" for o in OVERRIDES]], cwd=ROOT, capture_output=True, text=True)


@pytest.mark.parametrize("name", SMOKE_CONFIGS)
def test_smoke_exact_resume_after_kill_9(tmp_path, name):
    # All three runs go through launch.train, as a user's do: on a CPU with two or more
    # cores that is the data-parallel step over one device per core (train/cpu_devices.py),
    # whose resume must be as exact as one device's (the in-process runs of test_loop).
    SPEC = os.path.join(ROOT, "configs", f"{name}.py")
    straight, killed = str(tmp_path / "straight"), str(tmp_path / "killed")
    proc = _launch(SPEC, straight, ["-m", "launch.train"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    proc = _launch(SPEC, killed, ["-c", KILL_AT_15])
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert Checkpointer(killed).all_steps() == [10]
    proc = _launch(SPEC, killed, ["-m", "launch.train"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert _losses(killed) == _losses(straight) and len(_losses(straight)) >= 4
    assert bit_identical(load_params(straight)[1], load_params(killed)[1])
    train_losses = [loss for _, loss, _ in _losses(straight) if loss is not None]
    assert train_losses[-1] < train_losses[0]
    with open(os.path.join(killed, "samples.txt")) as f:
        assert len(f.read().strip()) > 0
