"""A restore that falls back past a damaged checkpoint says so in one line: the damage
warning once (it used to print twice, as a Python warning and as a log record), and none
of the `Exception ignored in: <coroutine ...>` tracebacks that Orbax's abandoned reads
printed whenever the garbage collector reached them. Those go to the details file the
line names; the run falls back and resumes as before."""
import os
import re
import subprocess
import sys

import pytest

from jaxmodels.train.checkpoint import checkpoint_dir
from jaxmodels.train.loop import train
from tests.reliability.damage import damage
from tests.train.util import ROOT, TOY_CONFIG, toy_cfg

# The readers' restore (launch.generate / sample / evaluate share load_params), then the
# garbage collector (what a failed read left behind prints now if it prints at all), then
# the same workdir resumed by launch.train.
READ_THEN_RESUME = """
import gc, runpy, sys
from launch import _env  # noqa: F401  (before jax, as every launch module)
from jaxmodels.train.checkpoint import load_params
workdir = sys.argv[1]
load_params(workdir, use_ema=False)
gc.collect()
sys.stderr.write("---- resume ----\\n")
sys.stderr.flush()
sys.argv = ["launch.train", *sys.argv[2:], "--workdir", workdir]
runpy.run_module("launch.train", run_name="__main__")
"""
ARGS = ["--config", TOY_CONFIG, "--config.train.steps=4", "--config.train.checkpoint_every=2", "--config.train.eval_every=0"]


@pytest.fixture
def damaged_run(tmp_path):
    workdir = str(tmp_path / "run")
    train(toy_cfg(train__steps=4, train__checkpoint_every=2, train__eval_every=0), workdir)
    damage(os.path.join(checkpoint_dir(workdir), "4"), "truncate")  # a read error mid-restore
    return workdir


def test_a_damaged_checkpoint_is_reported_once_without_orbax_tracebacks(damaged_run):
    proc = subprocess.run([sys.executable, "-c", READ_THEN_RESUME, damaged_run, *ARGS], cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": ROOT}, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"resumed from {checkpoint_dir(damaged_run)} at step 2" in proc.stdout
    assert "Exception ignored" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "RuntimeWarning" not in proc.stderr, proc.stderr[-3000:]
    details = []
    for part in proc.stderr.split("---- resume ----\n"):  # the reader, then the resumed run
        lines = [line for line in part.splitlines() if "is damaged" in line]
        assert len(lines) == 1, part[-3000:]
        assert re.search(r"checkpoint 4 in .* is damaged \(.*\); falling back to an older one \(details: ",
                         lines[0]), lines[0]
        details.append(re.search(r"\(details: (.*)\)$", lines[0]).group(1))
    for path in details:
        with open(path) as f:
            text = f.read()
        os.remove(path)
        assert "Traceback" in text and "Encountered error while reading" in text, text[-2000:]
