"""Sharded checkpoints: a GPT smoke run trained on a 2x4 (data x fsdp) mesh of 8 forced host
devices saves each array's shards; its checkpoint restores bit-exactly onto (8,1,1) and onto
one device; a 2x4 run SIGKILLed between checkpoints resumes to the same losses and params."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from jaxmodels.train.checkpoint import Checkpointer, load_params
from jaxmodels.train.sharding import path_str
from tests.train.test_resume_lm import KILL_AT_15, _losses
from tests.train.util import ROOT, bit_identical

import jax

SPEC = os.path.join(ROOT, "configs", "gpt_shakespeare_char.py") + ":smoke"
MESH_2X4 = ["--config.mesh.data=2", "--config.mesh.fsdp=4", "--config.mesh.tensor=1"]
OVERRIDES = ["--config.data.max_bytes=20000", "--config.train.eval_every=0"]
ENV8 = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "PYTHONPATH": ROOT}


def _train_2x4(workdir: str, kill_at_15: bool = False) -> subprocess.CompletedProcess:
    head = ["-c", KILL_AT_15] if kill_at_15 else ["-m", "launch.train"]
    return subprocess.run([sys.executable, *head, "--config", SPEC, "--workdir", workdir, *MESH_2X4, *OVERRIDES],
                          cwd=ROOT, env=ENV8, capture_output=True, text=True)


@pytest.fixture(scope="module")
def straight_2x4(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("mesh") / "straight")
    proc = _train_2x4(workdir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "mesh data=2, fsdp=4, tensor=1 (8 devices)" in proc.stdout
    return workdir


@pytest.mark.slow
def test_checkpoint_from_2x4_restores_exactly_on_8x1x1_and_one_device(straight_2x4, tmp_path):
    out = str(tmp_path / "params_8x1x1.npz")
    proc = subprocess.run([sys.executable, "-m", "tests.sharding.restore_on_mesh", straight_2x4, "8", "1", "1", out],
                          cwd=ROOT, env=ENV8, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads([ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1][7:])
    assert result["step"] == 20 and result["devices"] == 8
    assert result["shards"]["h/attn/c_attn/kernel"] == [2, 32, 96]  # replicated on (8,1,1)
    on_8 = np.load(out)
    _, one_device = load_params(straight_2x4, use_ema=False)  # this process: one device
    flat = jax.tree_util.tree_flatten_with_path(one_device)[0]
    assert sorted(on_8.files) == sorted(path_str(p) for p, _ in flat)
    assert all(np.array_equal(on_8[path_str(p)], np.asarray(x)) for p, x in flat)
    # and the saved files really hold shards: the step-20 state was split 4 ways on fsdp
    restored_2x4 = subprocess.run([sys.executable, "-m", "tests.sharding.restore_on_mesh", straight_2x4, "2", "4", "1",
                                   str(tmp_path / "p24.npz")], cwd=ROOT, env=ENV8, capture_output=True, text=True)
    assert restored_2x4.returncode == 0, restored_2x4.stderr[-3000:]
    shards = json.loads([ln for ln in restored_2x4.stdout.splitlines() if ln.startswith("RESULT ")][-1][7:])["shards"]
    assert shards["h/attn/c_attn/kernel"] == [2, 8, 96]
    assert all(np.array_equal(np.load(str(tmp_path / "p24.npz"))[k], on_8[k]) for k in on_8.files)


@pytest.mark.slow
def test_kill_9_on_2x4_mesh_resumes_exactly(straight_2x4, tmp_path):
    killed = str(tmp_path / "killed")
    proc = _train_2x4(killed, kill_at_15=True)
    assert proc.returncode == -9, proc.stderr[-3000:]
    assert Checkpointer(killed).all_steps() == [10]
    proc = _train_2x4(killed)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resumed from" in proc.stdout
    assert _losses(killed) == _losses(straight_2x4) and len(_losses(straight_2x4)) >= 4
    assert bit_identical(load_params(straight_2x4)[1], load_params(killed)[1])
