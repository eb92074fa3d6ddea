"""Data parallelism by shard_map (jaxmodels/train/data_parallel.py) and the CPU's one device
per core (jaxmodels/train/cpu_devices.py)."""
import json
import os
import subprocess
import sys

import pytest

from jaxmodels.config import ConfigError, load_config
from jaxmodels.train import cpu_devices
from tests.train.util import ROOT

SMOKE = os.path.join(ROOT, "configs/gpt_shakespeare_char.py:smoke")


@pytest.fixture(scope="module")
def result() -> dict:
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "PYTHONPATH": ROOT}
    proc = subprocess.run([sys.executable, "-m", "tests.sharding.data_parallel_step"], cwd=ROOT, env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


@pytest.mark.parametrize("case", ["gpt", "gpt_micro"])
def test_deterministic_loss_matches_one_device(result, case):
    got = result[case]
    assert got["params_diff"] < 1e-5 and got["opt_diff"] < 1e-5, got
    assert got["loss_diff"] < 1e-5 and got["eval_diff"] < 1e-5, got


def test_custom_calls_stay_per_device(result):
    # GSPMD would all-gather the batch around every C++ kernel; per device, the gradients
    # (and the loss's weights) are the only traffic: one combined all-reduce per step.
    got = result["gpt"]
    assert got["all_gathers"] == 0, got
    assert 1 <= got["all_reduces"] <= 2, got
    from jaxmodels.kernels import cpu_ffi
    if cpu_ffi.available():
        assert got["custom_calls"] > 0, got


def test_each_device_draws_its_own_noise(result):
    got = result["dit"]
    assert got["loss"] == pytest.approx(got["per_device_mean"], rel=1e-5, abs=1e-6), got
    assert abs(got["per_device_mean"] - got["same_key_mean"]) > 1e-4, got


def _cfg(*overrides):
    return load_config(SMOKE, list(overrides))


def test_devices_for_divides_the_micro_batch():
    assert cpu_devices.devices_for(_cfg("train.batch_size=12"), cores=2) == 2
    assert cpu_devices.devices_for(_cfg("train.batch_size=3"), cores=2) == 1
    assert cpu_devices.devices_for(_cfg("train.batch_size=6"), cores=4) == 3
    assert cpu_devices.devices_for(_cfg("train.batch_size=12", "train.micro_batches=4"), cores=16) == 3
    assert cpu_devices.devices_for(_cfg("train.batch_size=12", "mesh.cpu_devices=1"), cores=8) == 1
    assert cpu_devices.devices_for(_cfg("train.batch_size=12", "mesh.cpu_devices=4"), cores=2) == 4
    with pytest.raises(ConfigError, match="mesh.cpu_devices"):
        cpu_devices.devices_for(_cfg("mesh.cpu_devices=-2"), cores=2)


def test_configure_leaves_a_started_backend_alone():
    import jax
    jax.devices()
    assert cpu_devices.configure(_cfg()) is None


@pytest.mark.skipif(cpu_devices.usable_cores() < 2, reason="needs 2 cores")
@pytest.mark.parametrize("extra, devices", [((), 2), (("--config.mesh.cpu_devices=1",), 1)])
def test_launch_train_runs_one_device_per_core(tmp_path, extra, devices):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    proc = subprocess.run([sys.executable, "-m", "launch.train", "--config", SMOKE, "--workdir", str(tmp_path / "run"),
                           "--config.train.steps=2", "--config.train.eval_every=2", "--config.train.batch_size=4",
                           *extra], cwd=ROOT, env={**env, "PYTHONPATH": ROOT}, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert ("mesh data=2," in proc.stdout) == (devices == 2), proc.stdout
    assert "eval at step 2" in proc.stdout


def test_cpu_runs_the_step_reads_jax_platforms(monkeypatch):
    monkeypatch.setattr(os.path, "exists", lambda p: False)
    assert cpu_devices.cpu_runs_the_step({})
    assert cpu_devices.cpu_runs_the_step({"JAX_PLATFORMS": "cpu"})
    assert not cpu_devices.cpu_runs_the_step({"JAX_PLATFORMS": "cuda,cpu"})
    monkeypatch.setattr(os.path, "exists", lambda p: p == "/dev/nvidia0")
    assert not cpu_devices.cpu_runs_the_step({})
    assert cpu_devices.cpu_runs_the_step({"JAX_PLATFORMS": "cpu"})
