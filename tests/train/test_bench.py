import pytest

from jaxmodels.tasks import build_task
from jaxmodels.train.bench import benchmark
from tests.train.util import TOY_CONFIG, toy_cfg


def test_benchmark_numbers_are_consistent():
    cfg = toy_cfg()
    r = benchmark(cfg, steps=3, warmup=1)
    task = build_task(cfg)
    examples_per_s = cfg.train.batch_size / r["median_step_s"]
    assert r["tokens_per_s"] == pytest.approx(examples_per_s * 8)
    assert r["model_flops_per_s"] == pytest.approx(examples_per_s * task.flops_per_example())
    assert r["mfu"] == pytest.approx(r["model_flops_per_s"] / r["peak_flops_per_s"])
    assert 0 < r["min_step_s"] <= r["median_step_s"] and r["loss"] > 0


def test_launch_bench_prints_table(capsys):
    from launch.bench import main
    assert main(["--config", TOY_CONFIG, "--steps", "2", "--warmup", "1"]) == 0
    out = capsys.readouterr().out
    assert "median_step_s" in out and "mfu" in out and "tokens_per_s" in out
