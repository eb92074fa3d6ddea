import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxmodels.config import ConfigError
from jaxmodels.tasks import build_task
from jaxmodels.train.build import fresh_state, make_setup
from jaxmodels.train.optim import decay_mask, lr_schedule, make_optimizer
from jaxmodels.train.step import jit_train_step, make_train_step
from tests.train.util import toy_cfg


def test_schedule_warmup_cosine_and_constant():
    cfg = toy_cfg(optim__lr=1.0, optim__min_lr=0.1, optim__warmup_steps=4)
    s = lr_schedule(cfg.optim, total_steps=20)
    np.testing.assert_allclose([float(s(i)) for i in range(4)], [0.2, 0.4, 0.6, 0.8], rtol=1e-6)
    assert float(s(4)) == pytest.approx(1.0)
    assert float(s(12)) == pytest.approx(0.1 + 0.45 * (1 + np.cos(np.pi * 0.5)), rel=1e-6)
    assert float(s(20)) == pytest.approx(0.1) and float(s(100)) == pytest.approx(0.1)
    cfg.optim.schedule = "constant"
    assert float(lr_schedule(cfg.optim, 20)(15)) == pytest.approx(1.0)
    cfg.optim.schedule = "linear"
    with pytest.raises(ConfigError, match="constant, cosine"):
        lr_schedule(cfg.optim, 20)


def test_no_weight_decay_on_norms_biases_and_vectors():
    cfg = toy_cfg()
    task = build_task(cfg)
    params = jax.jit(task.init_params)(jax.random.PRNGKey(0))
    mask = decay_mask(params)
    # Scanned blocks give norms and biases a leading [layers] axis: still not decayed.
    assert mask["blocks"]["up"]["kernel"] and mask["blocks"]["down"]["kernel"]
    assert mask["embed"]["embedding"] and mask["head"]["kernel"] and mask["pos"]
    assert not mask["blocks"]["norm"]["scale"] and not mask["blocks"]["up"]["bias"]
    assert not mask["head"]["bias"] and not mask["norm_f"]["scale"]
    # Behaviour: zero gradients, so only weight decay moves params: p <- p - lr * wd * p.
    cfg.optim.update(lr=0.5, weight_decay=0.1, warmup_steps=0, schedule="constant", clip_norm=0.0)
    opt, _ = make_optimizer(cfg.optim, 10)
    updates, _ = jax.jit(opt.update)(jax.tree.map(jnp.zeros_like, params), opt.init(params), params)
    new = optax.apply_updates(params, updates)
    for path, decayed in jax.tree_util.tree_flatten_with_path(mask)[0]:
        p = np.asarray(dict(jax.tree_util.tree_flatten_with_path(params)[0])[path])
        n = np.asarray(dict(jax.tree_util.tree_flatten_with_path(new)[0])[path])
        np.testing.assert_allclose(n, p * (1 - 0.05) if decayed else p, rtol=1e-6, atol=1e-7)


def test_frozen_leaves_unchanged_and_carry_no_adam_state():
    cfg = toy_cfg(train__batch_size=4)
    cfg.task.frozen = ("embed", "blocks")
    task = build_task(cfg)
    setup = make_setup(task, cfg)
    state = fresh_state(task, cfg, setup)
    before = jax.tree.map(np.asarray, state.params)
    step = jit_train_step(make_train_step(task, setup.optimizer, setup.schedule, cfg.train, setup.trainable))
    batch = next(iter(task.dataset("train", 4, 0)))
    for _ in range(3):
        state, metrics = step(state, batch)
    after = state.params
    for name in ("embed", "blocks"):
        assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(before[name]), jax.tree.leaves(after[name])))
    for name in ("head", "norm_f", "pos"):
        assert not all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(before[name]), jax.tree.leaves(after[name])))
    # Adam moments (mu, nu) exist only for trainable leaves: 2 x their element count.
    trainable_elems = sum(x.size for n in ("head", "norm_f", "pos") for x in jax.tree.leaves(before[n]))
    float_state = sum(x.size for x in jax.tree.leaves(state.opt_state) if jnp.issubdtype(x.dtype, jnp.floating))
    assert float_state == 2 * trainable_elems
    assert np.isfinite(float(metrics["grad_norm"])) and float(metrics["grad_norm"]) > 0


def test_two_stage_lr_high_then_cooled_at_mid_training():
    cfg = toy_cfg(optim__lr=1.0, optim__min_lr=0.0, optim__warmup_steps=0, optim__schedule="two_stage")
    with pytest.raises(ConfigError, match="stage2_lr"):
        lr_schedule(cfg.optim, 100)
    cfg.optim.stage2_lr = 0.4
    s = lr_schedule(cfg.optim, total_steps=100)
    # Stage 1: the plain cosine from the high peak over the whole horizon.
    assert float(s(0)) == pytest.approx(1.0)
    assert float(s(25)) == pytest.approx(0.5 * (1 + np.cos(np.pi * 0.25)), rel=1e-6)
    assert float(s(49)) == pytest.approx(0.5 * (1 + np.cos(np.pi * 0.49)), rel=1e-6)
    # Stage 2 from step 50: an abrupt drop to stage2_lr, then a cosine from it to min_lr.
    assert float(s(50)) == pytest.approx(0.4) and float(s(50)) < float(s(49))
    assert float(s(75)) == pytest.approx(0.2 * (1 + np.cos(np.pi * 0.5)), rel=1e-6)
    assert float(s(100)) == pytest.approx(0.0, abs=1e-7)
    cfg.optim.stage2_at = 0.25
    assert float(lr_schedule(cfg.optim, 100)(25)) == pytest.approx(0.4)
    cfg.optim.stage2_at = 1.5
    with pytest.raises(ConfigError, match="stage2_at"):
        lr_schedule(cfg.optim, 100)


def test_two_stage_weight_decay_on_then_zero():
    """Zero gradients, so only weight decay moves the matrix: p *= (1 - lr * wd) per step in
    stage 1 (steps 0-4), unchanged in stage 2 (steps 5-9)."""
    cfg = toy_cfg(optim__lr=0.5, optim__min_lr=0.5, optim__warmup_steps=0, optim__schedule="two_stage",
                  optim__weight_decay=0.1, optim__clip_norm=0.0)
    cfg.optim.update(stage2_lr=0.5, stage2_at=0.5, stage2_weight_decay=0.0)
    params = {"w": jnp.ones((2, 2)), "bias": jnp.ones((2,))}
    opt, _ = make_optimizer(cfg.optim, 10)
    state = opt.init(params)
    update = jax.jit(opt.update)
    history = []
    for _ in range(10):
        updates, state = update(jax.tree.map(jnp.zeros_like, params), state, params)
        params = optax.apply_updates(params, updates)
        history.append(float(params["w"][0, 0]))
    np.testing.assert_allclose(history[:5], 0.95 ** np.arange(1, 6), rtol=1e-6)
    np.testing.assert_allclose(history[5:], [0.95 ** 5] * 5, rtol=1e-6)
    assert float(params["bias"][0]) == 1.0
    cfg.optim.schedule = "cosine"
    with pytest.raises(ConfigError, match="two_stage"):
        make_optimizer(cfg.optim, 10)
