import pytest

from jaxmodels.train import flops


@pytest.mark.parametrize("kind,dtype,expect", [
    ("NVIDIA GeForce RTX 4070 Ti", "bfloat16", 80.2e12),
    ("NVIDIA GeForce RTX 4070", "bfloat16", 58.3e12),
    ("NVIDIA GeForce RTX 3060", "float32", 12.7e12),
    ("NVIDIA H100 80GB HBM3", "bfloat16", 989e12),
    ("NVIDIA H100 PCIe", "bfloat16", 756e12),
    ("NVIDIA A100-SXM4-40GB", "float32", 156e12),
    ("NVIDIA H200", "float16", 989e12),
    ("Some Future GPU", "bfloat16", None),
])
def test_gpu_peak_lookup(kind, dtype, expect):
    assert flops.gpu_peak_flops(kind, dtype) == expect


def test_mfu():
    assert flops.mfu(1e9, 100.0, 1e12) == pytest.approx(0.1)
    assert flops.mfu(1e9, 100.0, 1e12, n_devices=2) == pytest.approx(0.05)
    assert flops.mfu(0.0, 100.0, 1e12) is None and flops.mfu(1e9, 100.0, None) is None


def test_cpu_peak_is_measured_once_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXMODELS_CACHE", str(tmp_path))
    monkeypatch.setattr(flops.os, "getloadavg", lambda: (1.0, 1.0, 1.0))
    calls = []
    monkeypatch.setattr(flops, "measure_matmul_flops", lambda **kw: calls.append(1) or 3e11)
    assert flops.cpu_peak_flops() == 3e11 and flops.cpu_peak_flops() == 3e11
    assert len(calls) == 1 and (tmp_path / "cpu_peak_flops.json").exists()
    # A quieter machine measures again and keeps the best reading.
    monkeypatch.setattr(flops.os, "getloadavg", lambda: (0.1, 0.1, 0.1))
    monkeypatch.setattr(flops, "measure_matmul_flops", lambda **kw: calls.append(1) or 2e11)
    assert flops.cpu_peak_flops() == 3e11 and len(calls) == 2


def test_real_matmul_measurement_is_plausible():
    rate = flops.measure_matmul_flops(n=256, repeats=2)
    assert 1e8 < rate < 1e14
