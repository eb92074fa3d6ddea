"""The diffusion task: FLOP counting, a tiny DiT's loss falling, the text path's batches, and
a real 4-step run through the shared trainer (eval grid, EMA kept across an interrupted
run, launch.sample writing PNG + npz)."""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from PIL import Image

from jaxmodels.config import ConfigError, load_config
from jaxmodels.data import glyphs
from jaxmodels.data.images import decode_caption
from jaxmodels.tasks import build_task
from jaxmodels.tasks.diffusion import count_matmul_flops, sample_timesteps

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DIT = os.path.join(ROOT, "configs", "dit_small.py")
PIXART = os.path.join(ROOT, "configs", "pixart_small.py")


def test_count_matmul_flops_counts_every_scanned_layer_and_convs():
    x, w = jnp.zeros((3, 5)), jnp.zeros((5, 7))
    assert count_matmul_flops(lambda a, b: a @ b, x, w) == 2 * 3 * 5 * 7
    ws = jnp.zeros((4, 5, 5))
    scanned = lambda a, b: jax.lax.scan(lambda c, m: (c @ m, None), a, b)[0]  # noqa: E731
    assert count_matmul_flops(scanned, x, ws) == 4 * 2 * 3 * 5 * 5
    img, k = jnp.zeros((2, 8, 8, 3)), jnp.zeros((3, 3, 3, 16))
    conv = lambda a, b: jax.lax.conv_general_dilated(a, b, (1, 1), "SAME",  # noqa: E731
                                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))
    assert count_matmul_flops(conv, img, k) == 2 * (2 * 8 * 8 * 16) * (3 * 3 * 3)


def test_count_matmul_flops_counts_the_cpu_custom_calls_as_the_dots_they_replace():
    from jaxmodels.kernels import cpu_ffi
    from jaxmodels.kernels.cpu_attention import cpu_attention
    from jaxmodels.kernels.cpu_matmul import cpu_matmul
    from jaxmodels.layers.attention import attention_einsum, attention_mask

    if not cpu_ffi.available():
        pytest.skip(f"C++ CPU kernels: {cpu_ffi.reason()}")
    x, w = jnp.zeros((3, 5)), jnp.zeros((5, 7))
    assert count_matmul_flops(cpu_matmul, x, w) == count_matmul_flops(lambda a, b: a @ b, x, w)
    q, k = jnp.zeros((2, 6, 4, 8)), jnp.zeros((2, 9, 2, 8))
    einsum = lambda q, k: attention_einsum(q, k, k, attention_mask(6, 9, causal=False))  # noqa: E731
    assert count_matmul_flops(lambda q, k: cpu_attention(q, k, k, causal=False), q, k) == \
        count_matmul_flops(einsum, q, k) == 4 * 2 * 6 * 9 * 4 * 8


def test_tiny_dit_loss_is_finite_and_falls():
    task = build_task(load_config(DIT + ":smoke"))
    params = task.init_params(jax.random.key(0))
    batch = {k: jnp.asarray(v) for k, v in next(iter(task.dataset("train", 8, 0))).items()}
    tx = optax.adam(3e-3)
    rng = jax.random.key(1)  # the same t / noise every step: the loss is a function of params only

    @jax.jit
    def step(p, s):
        (loss, aux), g = jax.value_and_grad(task.loss, has_aux=True)(p, batch, rng)
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s, loss, aux

    state, losses = tx.init(params), []
    for _ in range(12):
        params, state, loss, aux = step(params, state)
        losses.append(float(loss))
    assert np.all(np.isfinite(losses))
    assert float(aux["weight"]) == 8.0 and float(aux["mse"]) == pytest.approx(losses[-1])
    assert np.all(np.diff(losses) < 0) and losses[-1] < 0.85 * losses[0], losses
    assert task.flops_per_example() > 0


def test_text_task_batches_conditions_and_loss():
    cfg = load_config(PIXART + ":smoke")
    task = build_task(cfg)
    assert task.opts["conditioning"] == "text"
    batch = next(iter(task.dataset("train", 4, 0)))
    abstract = task.abstract_batch(4)
    assert set(batch) == set(abstract) == {"image", "label", "text_tokens", "text_mask"}
    for k, v in batch.items():
        assert v.shape == abstract[k].shape and v.dtype == abstract[k].dtype
    params = jax.jit(task.init_params)(jax.random.key(0))
    loss, _ = jax.jit(task.loss)(params, batch, jax.random.key(1))
    assert np.isfinite(float(loss))
    conds = task.eval_conditions(6, seed=0)
    held = set(glyphs.held_out_combos().tolist())
    for tokens, attrs, text in zip(conds["cond"]["text_tokens"], conds["attrs"], conds["captions"]):
        assert decode_caption(tokens) == text == glyphs.caption(tuple(attrs))
        assert glyphs.combo_index(attrs) in held  # evaluation prompts only held-out captions


def test_configs_variants_and_errors():
    for spec in ("dit_small.py", "dit_small.py:cpu", "dit_small.py:smoke", "dit_b2.py", "pixart_small.py",
                 "pixart_small.py:cpu", "pixart_small.py:smoke", "unet_ddpm64.py", "unet_ddpm64.py:smoke",
                 "dit_b2.py:cpu", "dit_b2.py:smoke", "sd_light.py", "sd_light.py:smoke", "unet_folder64.py",
                 "unet_folder64.py:smoke", "pixart_alpha_512.py", "pixart_alpha_512.py:smoke"):
        cfg = load_config(os.path.join(ROOT, "configs", spec))
        task = build_task(cfg)
        params = jax.eval_shape(task.init_params, jax.random.key(0))
        count = sum(p.size for p in jax.tree.leaves(params))
        assert count > 0
        assert task.abstract_batch(2)["image"].shape[1:] == task.image_shape
        if spec == "pixart_alpha_512.py":  # PixArt-XL/2: the paper's 0.6B; 64x64x4 latents, T5 120 x 4096
            assert abs(count / 1e6 - 611.3) < 0.5, count
            assert task.abstract_batch(2)["text_emb"].shape == (2, 120, 4096)
    for spec in ("dit_small.py:nope", "dit_b2.py:nope", "pixart_small.py:nope", "unet_ddpm64.py:cpu",
                 "sd_light.py:cpu", "unet_folder64.py:cpu", "pixart_alpha_512.py:cpu"):
        with pytest.raises(ConfigError, match="valid"):
            load_config(os.path.join(ROOT, "configs", spec))
    with pytest.raises(ConfigError, match="valid"):
        build_task(load_config(DIT + ":smoke", ["task.sampler=euler"]))


class _Stop(Exception):
    pass


def test_trainer_run_eval_grid_ema_resume_and_launch_sample(tmp_path, monkeypatch):
    from jaxmodels.train import metrics as metrics_lib
    from jaxmodels.train.checkpoint import load_params
    from jaxmodels.train.loop import train
    from launch.sample import main as sample_main

    overrides = ["train.steps=4", "train.checkpoint_every=2", "train.log_every=1", "train.eval_every=0"]
    straight, stopped = str(tmp_path / "straight"), str(tmp_path / "stopped")
    train(load_config(DIT + ":smoke", overrides), straight)
    grid = Image.open(os.path.join(straight, "samples", "step_000004.png"))
    assert grid.size == (8 * 33 + 1, 34)  # eval_samples=8: one row of 8 classes, 1-px padding

    write = metrics_lib.MetricsWriter.write

    def write_then_stop(self, step, m):
        write(self, step, m)
        if step == 3 and "loss" in m:
            raise _Stop()

    monkeypatch.setattr(metrics_lib.MetricsWriter, "write", write_then_stop)
    with pytest.raises(_Stop):
        train(load_config(DIT + ":smoke", overrides), stopped)
    monkeypatch.setattr(metrics_lib.MetricsWriter, "write", write)
    train(load_config(DIT + ":smoke", overrides), stopped)  # resumes from step 2 (or 3)

    _, ema_straight = load_params(straight)
    _, ema_stopped = load_params(stopped)
    _, raw = load_params(stopped, use_ema=False)
    leaves = lambda t: [np.asarray(x) for x in jax.tree.leaves(t)]  # noqa: E731
    for a, b in zip(leaves(ema_straight), leaves(ema_stopped)):
        np.testing.assert_array_equal(a, b)  # the EMA survived the interruption exactly
    assert any(not np.array_equal(a, b) for a, b in zip(leaves(ema_stopped), leaves(raw)))

    assert sample_main(["--workdir", stopped, "--num", "16", "--cfg", "2.0", "--steps", "3", "--seed", "5"]) == 0
    stem = os.path.join(stopped, "samples", "sample_ddim3_cfg2_seed5")
    out = np.load(stem + ".npz")
    assert out["samples"].shape == (16, 32, 32, 3) and out["samples"].dtype == np.float32
    np.testing.assert_array_equal(out["labels"], np.arange(16) // 2)
    assert np.all(np.abs(out["samples"]) <= 1.0 + 1e-6)  # x0 clipped to the data range
    assert Image.open(stem + ".png").size == (8 * 33 + 1, 2 * 33 + 1)
    # The raw params' samples go to their own file: the EMA's are not overwritten.
    assert sample_main(["--workdir", stopped, "--num", "16", "--cfg", "2.0", "--steps", "3", "--seed", "5",
                        "--no-ema"]) == 0
    np.testing.assert_array_equal(np.load(stem + ".npz")["samples"], out["samples"])
    assert not np.array_equal(np.load(stem + "_noema.npz")["samples"], out["samples"])


def test_timestep_sampling_uniform_and_logit_normal():
    key = jax.random.key(0)
    uniform = np.asarray(sample_timesteps(key, 20000, 1000))
    assert uniform.min() >= 0 and uniform.max() <= 999 and abs(uniform.mean() - 499.5) < 10
    high = np.asarray(sample_timesteps(key, 20000, 1000, "logit_normal", mean=1.0, std=1.0))
    assert high.dtype == np.int32 and high.min() >= 0 and high.max() <= 999
    # sigmoid(1 + z) has median sigmoid(1) = 0.731.
    assert abs(np.median(high) - 731) < 10
    centred = np.asarray(sample_timesteps(key, 20000, 1000, "logit_normal"))
    assert abs(np.median(centred) - 500) < 10 and (np.abs(centred - 500) < 250).mean() > 0.6
    with pytest.raises(ConfigError, match="timestep_sampling"):
        sample_timesteps(key, 4, 1000, "cubic")
    with pytest.raises(ConfigError, match="timestep_sampling"):
        build_task(load_config("configs/dit_small.py:smoke", ["task.timestep_sampling=cubic"]))


@pytest.mark.slow   # compiling two U-Net train steps: minutes on two loaded cores
def test_sd_light_and_folder_unet_smoke_train_a_step(tmp_path):
    from jaxmodels.train.loop import train

    for spec in ("sd_light.py:smoke", "unet_folder64.py:smoke"):
        cfg = load_config(os.path.join(ROOT, "configs", spec), ["train.steps=2", "train.checkpoint_every=2",
                                                                 "task.eval_samples=0"])
        train(cfg, str(tmp_path / spec))
        assert os.listdir(tmp_path / spec / "checkpoints")
