"""What a run prints (plan, estimate, log and eval lines, CPU advice), the first eval at the
first checkpoint, and wall-time checkpoints that fire on time while the device is busy."""
import os

import jax
import jax.numpy as jnp
import numpy as np

from jaxmodels.train import progress
from jaxmodels.train.checkpoint import Checkpointer
from jaxmodels.train.loop import train
from jaxmodels.train.metrics import read_metrics
from tests.train.toy_task import ToyTask
from tests.train.util import toy_cfg


class SlowDeviceTask(ToyTask):
    """The toy task plus `task.device_matmuls` chained 768x768 matmuls inside each compiled
    step (~36 GFLOP for 40: a fraction of a second on a CPU): like a big model, the step is
    slow on the device while the Python loop could dispatch ahead of it at once."""

    def loss(self, params, batch, rng, train=True):
        loss, aux = super().loss(params, batch, rng, train)
        # Seeded from the loss so XLA cannot fold the chain at compile time.
        w = jnp.full((768, 768), 1e-3, jnp.float32) * (1.0 + jax.lax.stop_gradient(loss))
        y = jax.lax.fori_loop(0, int(self.cfg.task.device_matmuls), lambda i, y: jnp.tanh(y @ w), w)
        return loss + 0.0 * jax.lax.stop_gradient(y.sum()), aux


def test_run_prints_plan_estimate_log_and_eval_lines(tmp_path, capsys):
    train(toy_cfg(train__steps=12, train__checkpoint_minutes=0.0), str(tmp_path))
    out = capsys.readouterr().out
    assert f"plan: 12 steps x 8 examples = 768 tokens on cpu; checkpoints every 10 steps to {tmp_path}" in out
    assert "measured: " in out and "the 8 steps left take" in out  # after 3 timed steps (2-4)
    assert "step 5/12  loss " in out and "step 10/12  loss " in out  # no bar (progress=False): lines
    assert "eval at step 10: val_loss " in out and "eval at step 12: val_loss " in out
    assert "advice:" not in out  # the toy config declares no CPU variant


def test_cpu_advice_names_the_declared_variant():
    cfg = toy_cfg()
    assert progress.cpu_advice(cfg) is None
    cfg.train.cpu_variant = "python -m launch.train --config configs/x.py:cpu (~5 min)"
    advice = progress.cpu_advice(cfg)
    assert jax.default_backend() == "cpu" and advice.endswith("configs/x.py:cpu (~5 min)")


def test_first_eval_comes_with_the_first_checkpoint(tmp_path):
    """eval_every is far away (a long run); the first checkpoint (step 4) brings the first eval
    (the sample grid of a diffusion run) anyway, once; a resumed run does not repeat it."""
    train(toy_cfg(train__steps=8, train__eval_every=1000, train__checkpoint_every=4), str(tmp_path))
    evals = [r["step"] for r in read_metrics(os.path.join(tmp_path, "metrics.jsonl")) if r.get("split") == "val"]
    assert evals == [4, 8]  # early at the first checkpoint, then the final one
    train(toy_cfg(train__steps=16, train__eval_every=1000, train__checkpoint_every=4), str(tmp_path))
    evals = [r["step"] for r in read_metrics(os.path.join(tmp_path, "metrics.jsonl")) if r.get("split") == "val"]
    assert evals == [4, 8, 16]


def test_time_based_checkpoint_fires_on_time_while_the_device_is_busy(tmp_path):
    """A save is due every 0.03 s of wall time, a step takes longer on the device, logging
    only at the end: since the loop stays at most one step ahead of the device, a save is at
    most one step late, so about every other step is saved. (Dispatching ahead, the loop
    queued many steps within the 0.03 s, each wall-time save came up to log_every steps
    late, and a 10-step run saved 3 times.)"""
    steps = 16
    cfg = toy_cfg(train__steps=steps, train__log_every=1000, train__eval_every=0, train__checkpoint_every=0,
                  train__checkpoint_minutes=0.03 / 60, train__max_to_keep=50)
    cfg.task.name = "tests.train.test_progress:SlowDeviceTask"
    cfg.task.device_matmuls = 40
    train(cfg, str(tmp_path))
    ckpt = Checkpointer(str(tmp_path), async_save=False)
    try:
        saved = ckpt.all_steps()
    finally:
        ckpt.close()
    assert saved[-1] == steps and len(saved) >= steps // 2 - 1, saved
