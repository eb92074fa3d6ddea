"""One train step: k micro-batches == one batch k times larger; EMA; per-step rng."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxmodels.config import ConfigError, load_config
from jaxmodels.tasks import build_task
from jaxmodels.train.build import fresh_state, make_setup
from jaxmodels.train.state import TrainState, ema_decay_at
from jaxmodels.train.step import jit_train_step, make_train_step
from tests.train.util import ROOT, max_abs_diff, toy_cfg


def _check_accumulation(task, cfg, batch):
    """SGD with lr 1 makes the params' change equal to minus the (accumulated) gradient."""
    setup = make_setup(task, cfg)
    sgd = optax.sgd(1.0)
    params = jax.jit(task.init_params)(jax.random.PRNGKey(0))
    state0 = TrainState(params=params, opt_state=sgd.init(params), step=jnp.zeros((), jnp.int32),
                        rng=jax.random.PRNGKey(1))
    results = {}
    for k in (1, 4):
        cfg.train.micro_batches = k
        step = jit_train_step(make_train_step(task, sgd, setup.schedule, cfg.train))
        state, metrics = step(jax.tree.map(jnp.copy, state0), batch)
        results[k] = (jax.tree.map(lambda a, b: np.asarray(a) - np.asarray(b), params, state.params),
                      jax.device_get(metrics))
    (g1, m1), (g4, m4) = results[1], results[4]
    assert max(float(np.max(np.abs(x))) for x in jax.tree.leaves(g1)) > 1e-3  # a real gradient
    assert max_abs_diff(g1, g4) <= 1e-5
    assert m4["weight"] == m1["weight"]
    for name in ("loss", "accuracy", "grad_norm"):
        assert m4[name] == pytest.approx(m1[name], abs=1e-5), name
    return m1


def test_accumulation_equals_big_batch_toy():
    cfg = toy_cfg()
    task = build_task(cfg)
    batch = next(iter(task.dataset("train", 8, 0)))
    # Examples carry different numbers of targets, so an unweighted mean would differ.
    per_example = batch["mask"].sum(axis=1)
    assert len(set(per_example.tolist())) > 1
    m = _check_accumulation(task, cfg, batch)
    assert m["weight"] == per_example.sum()


def test_accumulation_equals_big_batch_gpt():
    spec = os.path.join(ROOT, "configs", "gpt_shakespeare_char.py")
    cfg = load_config(spec + ":smoke", ["train.batch_size=4", "data.max_bytes=20000"])
    task = build_task(cfg)
    batch = next(iter(task.dataset("train", 4, 0)))
    m = _check_accumulation(task, cfg, batch)
    assert m["weight"] == 4 * cfg.data.seq_len


def test_micro_batches_must_divide_batch():
    cfg = toy_cfg(train__micro_batches=3)
    task = build_task(cfg)
    setup = make_setup(task, cfg)
    with pytest.raises(ConfigError, match="multiple of train.micro_batches"):
        make_train_step(task, setup.optimizer, setup.schedule, cfg.train)


def test_ema_update_and_metrics():
    cfg = toy_cfg("ema", train__batch_size=4)
    task = build_task(cfg)
    setup = make_setup(task, cfg)
    state = fresh_state(task, cfg, setup)
    p0 = jax.tree.map(np.asarray, state.params)
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(p0), jax.tree.leaves(state.ema)))
    step = jit_train_step(make_train_step(task, setup.optimizer, setup.schedule, cfg.train, setup.trainable))
    batch = next(iter(task.dataset("train", 4, 0)))
    state, metrics = step(state, batch)
    d = float(ema_decay_at(0, 0.9, True))
    assert d == pytest.approx(0.1)  # warm-up: (1+0)/(10+0)
    expect = jax.tree.map(lambda e, p: d * e + (1 - d) * np.asarray(p), p0, state.params)
    assert max_abs_diff(expect, state.ema) < 1e-6
    assert float(ema_decay_at(1000, 0.9, True)) == pytest.approx(0.9)
    assert float(ema_decay_at(0, 0.9, False)) == pytest.approx(0.9)
    assert set(metrics) >= {"loss", "grad_norm", "lr", "weight", "accuracy"}
    assert float(metrics["lr"]) == pytest.approx(float(setup.schedule(0)))
    assert int(state.step) == 1
