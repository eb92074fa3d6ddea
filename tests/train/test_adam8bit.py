"""8-bit blockwise AdamW (train/adam8bit.py) and the optim.kind switch: the code, the update
against f32 AdamW on a fixed tree, the state's size, Adafactor, and exact resume after kill -9."""
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxmodels.config import ConfigError, load_config
from jaxmodels.train import adam8bit
from jaxmodels.train.checkpoint import Checkpointer, load_params
from jaxmodels.train.loop import train
from jaxmodels.train.memory import tree_bytes
from jaxmodels.train.optim import make_optimizer
from tests.train.test_resume_lm import KILL_AT_15, _losses
from tests.train.util import ROOT, TOY_CONFIG, bit_identical, toy_cfg


def test_dynamic_codes():
    for code, lo in ((adam8bit.SIGNED, -1.0), (adam8bit.UNSIGNED, 0.0)):
        assert code.shape == (256,) and np.all(np.diff(code) > 0)
        # (256 values: 0 and +1 exactly; the signed code's lowest is the midpoint -0.993)
        assert abs(code[0] - lo) < 0.01 and code[-1] == 1.0 and 0.0 in code
    # Relative precision survives six decades below the block's absmax.
    x = jnp.asarray(np.geomspace(1e-6, 1.0, 4096).astype(np.float32))
    back = adam8bit.dequantize(adam8bit.quantize(x, adam8bit.UNSIGNED), adam8bit.UNSIGNED, x.shape)
    assert float(jnp.max(jnp.abs(back - x) / x)) < 0.10
    y = jnp.asarray(np.random.default_rng(0).standard_normal(1000).astype(np.float32))
    back = adam8bit.dequantize(adam8bit.quantize(y, adam8bit.SIGNED), adam8bit.SIGNED, y.shape)
    assert back.shape == y.shape and float(jnp.max(jnp.abs(back - y))) < 0.03 * float(jnp.max(jnp.abs(y)))


# Tolerance of the 8-bit update against f32 AdamW after STEPS steps on the same gradients:
# relative L2 error of each leaf's update below TOL (measured: 0.024 for the 8-bit leaf, whose
# gradient rows span 3 decades; 0 to rounding for the f32-moment leaf).
STEPS, TOL = 20, 0.03


def test_8bit_update_matches_f32_adamw_on_a_fixed_tree():
    rng = np.random.default_rng(0)
    params = {"w": jnp.asarray(rng.standard_normal((64, 128)), jnp.float32),     # quantised moments
              "b": jnp.asarray(rng.standard_normal((128,)), jnp.float32)}        # small: f32 moments
    ref, low = optax.scale_by_adam(b1=0.9, b2=0.95), adam8bit.scale_by_adam_8bit(b1=0.9, b2=0.95)
    s_ref, s_low = ref.init(params), low.init(params)
    assert isinstance(s_low.mu["w"], dict) and not isinstance(s_low.mu["b"], dict)
    step_ref, step_low = jax.jit(ref.update), jax.jit(low.update)
    for i in range(STEPS):
        # Gradients with a per-row scale spread over 3 decades, as real layers have.
        scale = np.geomspace(1e-3, 1.0, 64)[:, None]
        g = {"w": jnp.asarray(rng.standard_normal((64, 128)) * scale, jnp.float32),
             "b": jnp.asarray(rng.standard_normal((128,)), jnp.float32)}
        u_ref, s_ref = step_ref(g, s_ref)
        u_low, s_low = step_low(g, s_low)
    for name in params:
        err = float(jnp.linalg.norm(u_low[name] - u_ref[name]) / jnp.linalg.norm(u_ref[name]))
        print(f"{name}: relative L2 error of the 8-bit update {err:.4f}")
        assert err < TOL, (name, err)
    np.testing.assert_allclose(u_low["b"], u_ref["b"], rtol=1e-4, atol=1e-7)   # f32 moments: Adam to rounding


def test_state_size_and_kinds():
    params = {"w": jax.ShapeDtypeStruct((1024, 1024), jnp.float32)}
    cfg = toy_cfg()
    sizes = {}
    for kind in ("adamw", "adamw8bit", "adafactor"):
        cfg.optim.kind = kind
        opt, _ = make_optimizer(cfg.optim, 10)
        sizes[kind] = tree_bytes(jax.eval_shape(opt.init, params))
    n = 1024 * 1024
    assert sizes["adamw"] >= 8 * n and sizes["adamw8bit"] < 2.1 * n and sizes["adafactor"] < 0.05 * n
    cfg.optim.kind = "lion"
    with pytest.raises(ConfigError, match="adamw, adamw8bit, adafactor"):
        make_optimizer(cfg.optim, 10)


def test_adafactor_and_8bit_lower_the_toy_loss(tmp_path):
    for kind in ("adafactor", "adamw8bit"):
        summary = train(toy_cfg(optim__kind=kind, train__steps=20, train__eval_every=0), str(tmp_path / kind))
        losses = [r["loss"] for r in _rows(str(tmp_path / kind)) if "loss" in r]
        assert losses[-1] < losses[0] - 0.1, (kind, losses)
        del summary


def _rows(workdir):
    from jaxmodels.train.metrics import read_metrics
    return read_metrics(os.path.join(workdir, "metrics.jsonl"))


def test_exact_resume_after_kill_9_with_8bit_state(tmp_path):
    # One device in both processes (launch.train would give a CPU one per core): this is
    # about the 8-bit state; test_resume_lm resumes the data-parallel step.
    overrides = ["optim.kind=adamw8bit", "train.eval_every=0", "mesh.cpu_devices=1"]
    straight, killed = str(tmp_path / "straight"), str(tmp_path / "killed")
    train(load_config(TOY_CONFIG, overrides), straight)
    proc = subprocess.run([sys.executable, "-c", KILL_AT_15, "--config", TOY_CONFIG, "--workdir", killed,
                           *[f"--config.{o}" for o in overrides]], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert Checkpointer(killed).all_steps() == [10]
    train(load_config(TOY_CONFIG, overrides), killed)
    assert _losses(killed) == _losses(straight) and len(_losses(straight)) >= 4
    # Bit-identical params after 20 more steps also means the restored 8-bit moments were exact.
    assert bit_identical(load_params(straight)[1], load_params(killed)[1])


def _tree(rng, scale=1.0):
    """A stacked [4, 64, 128] leaf (layer-by-layer 8-bit path), a plain 8-bit matrix, a small
    f32-moment bias."""
    return {"stack": jnp.asarray(rng.standard_normal((4, 64, 128)) * scale, jnp.float32),
            "w": jnp.asarray(rng.standard_normal((64, 128)) * scale, jnp.float32),
            "bias": jnp.asarray(rng.standard_normal((128,)) * scale, jnp.float32)}


def test_fused_8bit_adamw_equals_the_chain_it_replaces():
    """adamw_8bit (clip, 8-bit Adam, decoupled decay, lr in one transformation) gives the same
    parameters through apply_to_params, through update + apply_updates, and as the optax chain
    clip_by_global_norm -> scale_by_adam_8bit -> add_decayed_weights -> scale_by_learning_rate."""
    rng = np.random.default_rng(1)
    params = _tree(rng)
    schedule = lambda count: 1e-2 / (1.0 + count)  # noqa: E731
    mask = lambda p: {"stack": True, "w": True, "bias": False}  # noqa: E731
    fused = adam8bit.adamw_8bit(schedule, b1=0.9, b2=0.95, clip_norm=1.0, weight_decay=0.1, decay_mask=mask)
    chain = optax.chain(optax.clip_by_global_norm(1.0), adam8bit.scale_by_adam_8bit(b1=0.9, b2=0.95),
                        optax.add_decayed_weights(0.1, mask=mask), optax.scale_by_learning_rate(schedule))
    by_apply, by_update, by_chain = params, params, params
    s_apply, s_update, s_chain = fused.init(params), fused.init(params), chain.init(params)
    apply = jax.jit(fused.apply_to_params)

    def update(tx, g, s, p):
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s
    update = jax.jit(update, static_argnums=0)

    for i in range(5):
        g = _tree(rng, scale=0.3)   # global norm ~ 30: the clip is active
        by_apply, s_apply = apply(g, s_apply, by_apply)
        by_update, s_update = update(fused, g, s_update, by_update)
        by_chain, s_chain = update(chain, g, s_chain, by_chain)
    for name in params:
        moved = float(jnp.linalg.norm(by_chain[name] - params[name]))
        for other in (by_apply, by_update):
            err = float(jnp.linalg.norm(other[name] - by_chain[name]))
            assert err <= 1e-4 * moved, (name, err, moved)
    assert int(s_apply.count) == 5
    np.testing.assert_array_equal(s_apply.mu["stack"]["q"], s_chain[1].mu["stack"]["q"])


def test_fused_8bit_step_keeps_no_full_size_f32_copy():
    """Compiled and donated, apply_to_params on a 16-layer stack needs temporaries of a few
    layers (measured 0.32 of the parameters' size), where the optax chain it replaces holds
    full-size f32 trees (measured 2.76: clipped gradients, the per-layer map's output, the
    scaled updates)."""
    params = {"stack": jax.ShapeDtypeStruct((16, 256, 1024), jnp.float32)}
    size = 16 * 256 * 1024 * 4
    mask = lambda p: {"stack": True}  # noqa: E731
    fused = adam8bit.adamw_8bit(lambda c: 1e-3, clip_norm=1.0, weight_decay=0.1, decay_mask=mask)
    chain = optax.chain(optax.clip_by_global_norm(1.0), adam8bit.scale_by_adam_8bit(),
                        optax.add_decayed_weights(0.1, mask=mask), optax.scale_by_learning_rate(lambda c: 1e-3))

    def chained(g, s, p):
        u, s = chain.update(g, s, p)
        return optax.apply_updates(p, u), s

    temps = {}
    for name, tx, step in (("fused", fused, fused.apply_to_params), ("chain", chain, chained)):
        state = jax.eval_shape(tx.init, params)
        ma = jax.jit(step, donate_argnums=(1, 2)).lower(params, state, params).compile().memory_analysis()
        assert ma.output_size_in_bytes - ma.alias_size_in_bytes < 0.01 * size   # params and moments in place
        temps[name] = ma.temp_size_in_bytes / size
    assert temps["fused"] < 0.5 and temps["chain"] > 2.0, temps


def test_large_unstacked_leaf_is_updated_in_equal_slices(monkeypatch):
    """An unstacked 8-bit leaf larger than adam8bit.CHUNK (an embedding, a tied head) is
    updated slice by slice in place: the same update as the whole leaf's, and compiled
    and donated its temporaries are a slice's, not four f32 copies of the leaf (LLaMA-3.2
    1B's 128k x 2048 embedding: 4 GiB before)."""
    rng = np.random.default_rng(2)
    mask = lambda p: {"emb": True, "odd": True}  # noqa: E731
    # (a new transformation per CHUNK: jit would reuse the trace of the same function)
    fused = lambda: adam8bit.adamw_8bit(lambda c: 1e-2 / (1.0 + c), b1=0.9, b2=0.95,  # noqa: E731
                                        clip_norm=1.0, weight_decay=0.1, decay_mask=mask)
    # emb: 96 x 1024 = 384 blocks, sliced in 4096 values; odd: 300 x 97 is not whole blocks,
    # so it stays whole (the moments are padded).
    params = {"emb": jnp.asarray(rng.standard_normal((96, 1024)), jnp.float32),
              "odd": jnp.asarray(rng.standard_normal((300, 97)), jnp.float32)}
    grads = [{k: jnp.asarray(rng.standard_normal(v.shape) * 0.3, jnp.float32) for k, v in params.items()}
             for _ in range(3)]

    def run(chunk):
        monkeypatch.setattr(adam8bit, "CHUNK", chunk)
        assert adam8bit._chunk_size(params["emb"]) == (4096 if chunk == 4096 else 0)
        assert adam8bit._chunk_size(params["odd"]) == 0
        tx = fused()
        p, s = params, tx.init(params)
        step = jax.jit(tx.apply_to_params)
        for g in grads:
            p, s = step(g, s, p)
        return p, s
    whole, sliced = run(1 << 30), run(4096)
    # The same arithmetic; another program, so XLA may round a few values differently by an
    # ulp (measured: 0.4% of the params, at most 2.4e-7; the codes all equal).
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(whole), jax.tree.leaves(sliced)):
        a, b = np.asarray(a), np.asarray(b)
        if a.dtype == np.uint8:
            assert np.mean(a != b) <= 1e-3 and np.max(np.abs(a.astype(int) - b)) <= 1, path
        else:
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=jax.tree_util.keystr(path))

    big = {"emb": jax.ShapeDtypeStruct((1024, 4096), jnp.float32),
           "odd": jax.ShapeDtypeStruct((3, 97), jnp.float32)}  # (small: f32 moments)
    size = 1024 * 4096 * 4
    temps = {}
    for name, chunk in (("whole", 1 << 30), ("sliced", 1 << 16)):
        monkeypatch.setattr(adam8bit, "CHUNK", chunk)
        tx = fused()
        state = jax.eval_shape(tx.init, big)
        ma = (jax.jit(tx.apply_to_params, donate_argnums=(1, 2))
              .lower(big, state, big).compile().memory_analysis())
        assert ma.output_size_in_bytes - ma.alias_size_in_bytes < 0.01 * size   # in place
        temps[name] = ma.temp_size_in_bytes / size
    assert temps["sliced"] < 0.2 and temps["whole"] > 1.5, temps


@pytest.mark.slow  # ~1-2 min: two smoke runs and a killed one
def test_exact_resume_after_kill_9_with_a_sliced_leaf(tmp_path, monkeypatch):
    """The char GPT's 256 x 32 embedding updated in 8 slices (CHUNK lowered to 1024 values in
    every process), bf16 params with their rounding noise drawn per slice: killed at step 15
    and resumed from step 10, the losses and params equal the straight run's."""
    spec = os.path.join(ROOT, "configs", "gpt_shakespeare_char.py:smoke")
    overrides = ["data.max_bytes=20000", "train.eval_every=0", "optim.kind=adamw8bit",
                 "optim.param_dtype=bfloat16", "mesh.cpu_devices=1"]
    monkeypatch.setattr(adam8bit, "CHUNK", 1024)
    assert adam8bit._chunk_size(jax.ShapeDtypeStruct((256, 32), jnp.float32)) == 1024
    straight, killed = str(tmp_path / "straight"), str(tmp_path / "killed")
    train(load_config(spec, overrides), straight)
    script = "import jaxmodels.train.adam8bit as a\na.CHUNK = 1024\n" + KILL_AT_15
    proc = subprocess.run([sys.executable, "-c", script, "--config", spec, "--workdir", killed,
                           *[f"--config.{o}" for o in overrides]], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert Checkpointer(killed).all_steps() == [10]
    train(load_config(spec, overrides), killed)
    assert _losses(killed) == _losses(straight) and len(_losses(straight)) >= 4
    assert bit_identical(load_params(straight)[1], load_params(killed)[1])
