"""benchmarks/gpu_kernels.py --cpu-dry-run: every row runs and every kernel matches its
reference (the script that a GPU session runs once must not have rotted)."""
import json
import os

import pytest


@pytest.mark.slow  # ~2 min on 2 cores: every kernel interpreted plus two tiny train steps
def test_gpu_kernels_dry_run(tmp_path, monkeypatch):
    from benchmarks import common, gpu_kernels

    monkeypatch.setattr(common, "RESULTS_DIR", str(tmp_path))
    gpu_kernels.main(["--cpu-dry-run"])
    rows = json.load(open(os.path.join(tmp_path, "gpu_kernels_cpu_dry_run.json")))["rows"]
    assert {r["op"] for r in rows} >= {"flash attention", "cross-entropy", "layernorm + modulate", "rmsnorm",
                                       "selective scan", "rwkv-7 wkv", "nf4 matmul"}
    assert all(r["status"] == "ok" for r in rows), [r for r in rows if r["status"] != "ok"]
    assert all(r["max_err"] < 1e-4 for r in rows if "max_err" in r)
