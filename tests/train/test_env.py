import os
import stat

from launch import _env


def _fake_nvidia_smi(tmp_path, monkeypatch, mib="24576"):
    exe = tmp_path / "nvidia-smi"
    exe.write_text(f"#!/bin/sh\necho {mib}\n")
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")


def test_budget_from_argv():
    assert _env.budget_from_argv(["--config", "x.py"]) == 12.0
    assert _env.budget_from_argv(["--config.memory.budget_gb=6"]) == 6.0
    assert _env.budget_from_argv(["--config.memory.budget_gb", "8.5"]) == 8.5


def test_fraction_from_gpu_memory(tmp_path, monkeypatch):
    _fake_nvidia_smi(tmp_path, monkeypatch)  # a 24 GiB card
    env = {}
    assert _env.configure(["--config.memory.budget_gb=6"], env) == "0.250"
    assert env == {"XLA_CLIENT_MEM_FRACTION": "0.250"}  # never the deprecated variable
    assert _env.configure([], {}) == "0.500"


def test_user_setting_wins_and_no_gpu_sets_nothing(tmp_path, monkeypatch):
    _fake_nvidia_smi(tmp_path, monkeypatch)
    env = {"XLA_PYTHON_CLIENT_MEM_FRACTION": ".9"}
    assert _env.configure([], env) is None and "XLA_CLIENT_MEM_FRACTION" not in env
    env = {"XLA_CLIENT_MEM_FRACTION": ".3"}
    assert _env.configure([], env) is None and env["XLA_CLIENT_MEM_FRACTION"] == ".3"
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert _env.configure([], {}) is None
