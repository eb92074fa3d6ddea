import jax
import numpy as np
import pytest

from jaxmodels.tasks import build_task
from jaxmodels.train.build import make_setup
from jaxmodels.train.loop import train
from jaxmodels.train.memory import MemoryBudgetError, estimate
from tests.train.util import toy_cfg


def test_estimate_on_abstract_shapes_allocates_nothing():
    cfg = toy_cfg(train__batch_size=8)
    task = build_task(cfg)
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(make_setup(task, cfg).abstract_params))
    live_before = len(jax.live_arrays())
    report = estimate(cfg, task)
    assert len(jax.live_arrays()) == live_before  # compiled on ShapeDtypeStructs only
    assert report.params == 4 * n_params
    assert report.optimizer >= 2 * 4 * n_params  # Adam mu + nu
    assert report.batch == 8 * (9 * 4 + 8 * 4 + 4)  # tokens int32[8,9], mask f32[8,8], scale f32[8]
    assert report.temp > 0
    assert report.total >= report.params + report.optimizer + report.temp
    assert report.backend == jax.devices()[0].platform and "compiled for" in str(report)
    assert report.fits


def test_over_budget_is_refused_before_step_0(tmp_path):
    cfg = toy_cfg(memory__check=True, memory__budget_gb=1e-5)
    with pytest.raises(MemoryBudgetError) as e:
        train(cfg, str(tmp_path))
    msg = str(e.value)
    assert "micro_batches=2" in msg and "--config.model.remat=nothing_saveable" in msg
    assert "--config.model.seq_len" in msg and "DOES NOT FIT" in msg
    assert not (tmp_path / "checkpoints").exists() or not list((tmp_path / "checkpoints").iterdir())


def test_launch_memory_exit_codes(capsys):
    from launch.memory import main
    from tests.train.util import TOY_CONFIG
    assert main(["--config", TOY_CONFIG]) == 0
    assert "total" in capsys.readouterr().out
    assert main(["--config", TOY_CONFIG, "--config.memory.budget_gb=1e-5"]) == 1
    assert "does not fit; try: --config.train.micro_batches=2" in capsys.readouterr().out


def test_launch_memory_estimates_the_gpu_loss_on_a_cpu_host(monkeypatch):
    """On a CPU host launch.memory counts kernels.cross_entropy=auto as the chunked loss a
    GPU runs (dispatch picks the full logits only on a CPU); an explicit choice is kept."""
    import launch.memory as lm
    from tests.train.util import toy_cfg
    monkeypatch.setattr(lm, "CPU_HOST", True)
    cfg = toy_cfg()
    assert cfg.kernels.cross_entropy == "auto"
    note = lm.as_on_a_gpu(cfg)
    assert "chunked" in note and cfg.kernels.cross_entropy == "xla"
    # attention=auto is the C++ kernel on a CPU, whose buffers XLA cannot count: the XLA form.
    assert "C++ kernel" in note and cfg.kernels.attention == "xla"
    # matmul=auto is MKL's custom call on an Intel CPU host: counted as XLA's dot, as on a GPU.
    assert "XLA's dot" in note and cfg.kernels.matmul == "xla"
    # norm=auto is the C++ norm on a CPU host: counted as the XLA norm.
    assert "XLA norm" in note and cfg.kernels.norm == "xla"
    cfg.kernels.cross_entropy = "dense"
    assert lm.as_on_a_gpu(cfg) == "" and cfg.kernels.cross_entropy == "dense"
    monkeypatch.setattr(lm, "CPU_HOST", False)
    cfg.kernels.cross_entropy = "auto"
    assert lm.as_on_a_gpu(cfg) == "" and cfg.kernels.cross_entropy == "auto"
