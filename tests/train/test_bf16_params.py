"""bf16 parameter storage (optim.param_dtype="bfloat16"): stochastic rounding is unbiased
on a fixed tree, lets updates far below a bf16 step accumulate, and a toy run learns with
bf16 params and 8-bit moments."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmodels.config import ConfigError
from jaxmodels.train.loop import train
from jaxmodels.train.optim import make_optimizer
from jaxmodels.train.rounding import stochastic_round
from tests.train.util import toy_cfg

DRAWS = 4096


def test_stochastic_rounding_is_unbiased_on_a_fixed_tree():
    # Values between bf16 neighbours at several positions and scales, both signs; round to
    # nearest is off by up to half a step on each, the mean of the random roundings is not.
    frac = np.array([0.05, 0.25, 0.5, 0.75, 0.95], np.float32)
    tree = {"a": jnp.asarray((1.0 + frac * 2.0 ** -7)),                    # step 2^-7 near 1
            "b": jnp.asarray(-(0.01 + frac * 2.0 ** -14).astype(np.float32))}  # step 2^-14 near 0.01
    keys = jax.random.split(jax.random.PRNGKey(0), DRAWS)
    draws = jax.vmap(lambda k: jax.tree.map(lambda x: stochastic_round(x, k), tree))(keys)
    for name, x in tree.items():
        got = draws[name]
        assert got.dtype == jnp.bfloat16
        lo, hi = jnp.min(got, axis=0).astype(jnp.float32), jnp.max(got, axis=0).astype(jnp.float32)
        assert bool(jnp.all((lo <= x) & (x <= hi)))   # only ever the two neighbours
        step = float(hi[0] - lo[0])
        mean = jnp.mean(got.astype(jnp.float32), axis=0)
        # The mean's standard error is <= step / (2 sqrt(DRAWS)) = step / 128; allow 4 of them.
        assert float(jnp.max(jnp.abs(mean - x))) < 4 * step / 128, (name, mean - x)
        nearest = x.astype(jnp.bfloat16).astype(jnp.float32)
        assert float(jnp.max(jnp.abs(nearest - x))) > 0.2 * step  # (what the test would catch)
    with pytest.raises(ValueError, match="bfloat16"):
        stochastic_round(tree["a"], keys[0], jnp.float16)


def test_updates_below_a_bf16_step_accumulate():
    """1000 updates of +1e-4 to a weight of 1.0 (bf16 step 0.0078): round to nearest never
    moves it, stochastic rounding ends near 1.1."""
    w_rne = w_sr = jnp.ones((256,), jnp.bfloat16)
    key = jax.random.PRNGKey(1)
    add = jax.jit(lambda w, k: stochastic_round(w.astype(jnp.float32) + 1e-4, k))
    for i in range(1000):
        w_rne = (w_rne.astype(jnp.float32) + 1e-4).astype(jnp.bfloat16)
        w_sr = add(w_sr, jax.random.fold_in(key, i))
    assert float(jnp.max(jnp.abs(w_rne.astype(jnp.float32) - 1.0))) == 0.0
    assert abs(float(jnp.mean(w_sr.astype(jnp.float32))) - 1.1) < 0.01


def test_param_dtype_needs_the_fused_8bit_step():
    cfg = toy_cfg(optim__param_dtype="bfloat16")
    with pytest.raises(ConfigError, match="optim.kind=adamw8bit"):
        make_optimizer(cfg.optim, 10)
    cfg.optim.kind = "adamw8bit"
    with pytest.raises(ConfigError, match="no adapters"):
        make_optimizer(cfg.optim, 10, trainable={"w": True})
    cfg.optim.param_dtype = "float16"
    with pytest.raises(ConfigError, match="float32, bfloat16"):
        make_optimizer(cfg.optim, 10)


@pytest.mark.slow  # ~16 s; the rounding tests run by default
def test_toy_run_learns_with_bf16_params(tmp_path):
    cfg = toy_cfg(optim__kind="adamw8bit", optim__param_dtype="bfloat16", train__steps=20, train__eval_every=0)
    train(cfg, str(tmp_path))
    from jaxmodels.train.metrics import read_metrics
    losses = [r["loss"] for r in read_metrics(os.path.join(tmp_path, "metrics.jsonl")) if "loss" in r]
    assert losses[-1] < losses[0] - 0.1, losses
    from jaxmodels.train.checkpoint import load_params
    params = load_params(str(tmp_path))[1]
    assert {x.dtype for x in jax.tree.leaves(params)} == {np.dtype(jnp.bfloat16)}


@pytest.mark.slow
def test_exact_resume_after_kill_9_with_bf16_params(tmp_path):
    """The rounding's random stream comes from the step's key: a run killed at step 15 and
    resumed from its step-10 checkpoint ends bit-identical to one never stopped."""
    import subprocess
    import sys

    from jaxmodels.config import load_config
    from jaxmodels.train.checkpoint import Checkpointer, load_params
    from tests.train.test_resume_lm import KILL_AT_15, _losses
    from tests.train.util import ROOT, TOY_CONFIG, bit_identical

    overrides = ["optim.kind=adamw8bit", "optim.param_dtype=bfloat16", "train.eval_every=0",
                 "mesh.cpu_devices=1"]  # one device in both processes, as the in-process runs
    straight, killed = str(tmp_path / "straight"), str(tmp_path / "killed")
    train(load_config(TOY_CONFIG, overrides), straight)
    proc = subprocess.run([sys.executable, "-c", KILL_AT_15, "--config", TOY_CONFIG, "--workdir", killed,
                           *[f"--config.{o}" for o in overrides]], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert Checkpointer(killed).all_steps() == [10]
    train(load_config(TOY_CONFIG, overrides), killed)
    assert _losses(killed) == _losses(straight) and len(_losses(straight)) >= 4
    assert bit_identical(load_params(straight)[1], load_params(killed)[1])
