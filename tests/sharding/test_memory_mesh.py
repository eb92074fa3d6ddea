"""launch.memory with a mesh: --devices 8 compiles for 8 fake CPU devices and every number is
one device's share; FSDP over 8 holds about 1/8 of the params and optimizer state."""
import os
import re
import subprocess
import sys

from jaxmodels.config import load_config
from jaxmodels.train.memory import estimate
from tests.train.util import ROOT

SPEC = os.path.join(ROOT, "configs", "gpt_shakespeare_char.py") + ":smoke"
WIDER = ["model.n_embd=256", "model.n_head=4"]  # big enough for MiB-resolution rows


def _rows(text: str) -> dict:
    return {m.group(1).strip(): float(m.group(2)) for m in re.finditer(r"^  (\w[\w +()]*?)\s+([\d.]+) MiB", text, re.M)}


def test_memory_report_on_an_fsdp_mesh_is_per_device():
    env = {**os.environ, "PYTHONPATH": ROOT}
    env.pop("XLA_FLAGS", None)
    proc = subprocess.run([sys.executable, "-m", "launch.memory", "--config", SPEC, "--devices", "8",
                           "--config.mesh.data=1", "--config.mesh.fsdp=8", *[f"--config.{o}" for o in WIDER]],
                          cwd=ROOT, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "per device of 8" in proc.stdout
    sharded = _rows(proc.stdout)
    single = _rows(str(estimate(load_config(SPEC, WIDER))))  # this process: one device
    assert single["optimizer state"] > 4
    for row in ("params", "optimizer state"):
        assert abs(sharded[row] - single[row] / 8) <= 0.02 * single[row], (row, sharded[row], single[row])
    assert sharded["total"] < single["total"] / 2
