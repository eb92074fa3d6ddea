"""Mamba: decoding with the recurrent state == the full forward; logits == HF transformers."""
import dataclasses
import math
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmodels.config import ConfigError
from jaxmodels.models import build_model, mamba

FIXTURE = os.path.join(os.path.dirname(__file__), "..", "fixtures", "mamba")
TINY = dict(name="mamba", vocab_size=50, d_model=32, n_layer=2, d_state=4, scan_chunk=4)


@pytest.fixture(scope="module")
def tiny():
    model = build_model(dict(TINY, scan_mode="sequential"))
    tokens = jax.random.randint(jax.random.key(0), (2, 9), 0, 50)
    params = jax.jit(model.init)(jax.random.key(1), tokens)["params"]
    return model, tokens, params, jax.jit(model.apply)({"params": params}, tokens)


def test_shapes_padding_and_init(tiny):
    model, tokens, params, logits = tiny
    cfg = model.cfg
    assert cfg.padded_vocab == 56  # 50 padded to a multiple of 8, as mamba_ssm does
    chex.assert_shape(params["embedding"], (56, 32))
    chex.assert_shape(params["layers"]["mixer"]["A_log"], (2, 64, 4))
    chex.assert_shape(params["layers"]["mixer"]["conv1d_kernel"], (2, 4, 64))
    assert sum(x.size for x in jax.tree.leaves(params)) == mamba.num_params(cfg)
    np.testing.assert_allclose(jnp.exp(params["layers"]["mixer"]["A_log"][0, 0]), np.arange(1, 5), rtol=1e-6)
    np.testing.assert_array_equal(params["layers"]["mixer"]["D"], 1.0)
    dt = jax.nn.softplus(params["layers"]["mixer"]["dt_proj"]["bias"])
    assert float(dt.min()) >= 1e-3 * 0.999 and float(dt.max()) <= 0.1 * 1.001
    # out_proj: U(±1/sqrt(E)) / sqrt(n_layer)
    limit = 1 / math.sqrt(64) / math.sqrt(2)
    out = params["layers"]["mixer"]["out_proj"]["kernel"]
    assert float(jnp.abs(out).max()) <= limit and float(jnp.abs(out).max()) > 0.8 * limit
    chex.assert_shape(logits, (2, 9, 56))
    assert logits.dtype == jnp.float32


def test_unknown_field_lists_valid_ones():
    with pytest.raises(ConfigError, match="d_state"):
        build_model(dict(name="mamba", d_sate=4))


def test_prefill_and_steps_equal_full_forward(tiny):
    """Prefill (4 tokens, conv + ssm state from zeros) then 5 single steps == one full pass."""
    model, tokens, params, full = tiny
    decode = jax.jit(lambda p, x, s, pos: model.apply({"params": p}, x, decode_state=s, pos=pos))
    state = model.init_decode_state(2, 9)
    chex.assert_shape(state["ssm"], (2, 2, 64, 4))
    # Memory is flat: the state does not depend on max_len.
    chex.assert_trees_all_equal_shapes(state, model.init_decode_state(2, 1000))
    logits, state = decode(params, tokens[:, :4], state, jnp.int32(0))
    outs = [logits]
    for t in range(4, 9):
        logits, state = decode(params, tokens[:, t:t + 1], state, jnp.int32(t))
        outs.append(logits)
    np.testing.assert_allclose(jnp.concatenate(outs, 1), full, rtol=1e-5, atol=1e-5)


def test_chunked_scan_mode_agrees_with_gradients(tiny):
    """Model-level check; every mode's values and gradients are covered in tests/test_scan.py."""
    _, tokens, params, _ = tiny
    models = {m: build_model(dict(TINY, scan_mode=m)) for m in ("sequential", "chunked")}

    def loss(p, model):
        logits = model.apply({"params": p}, tokens)
        return -jnp.mean(jax.nn.log_softmax(logits)[..., 3])

    grad_fn = jax.jit(jax.value_and_grad(loss), static_argnums=1)
    ref_loss, ref_grad = grad_fn(params, models["sequential"])
    for name in ("chunked",):
        l, g = grad_fn(params, models[name])
        np.testing.assert_allclose(l, ref_loss, rtol=1e-5)
        for x, y in zip(jax.tree.leaves(g), jax.tree.leaves(ref_grad)):
            np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6)


def test_logits_and_greedy_match_transformers():
    from jaxmodels.convert import from_hf

    ref = np.load(os.path.join(FIXTURE, "reference.npz"))
    model, params = from_hf(FIXTURE)
    logits = jax.jit(model.apply)({"params": params}, jnp.asarray(ref["tokens"]))
    scale = np.abs(ref["logits"]).max()
    np.testing.assert_allclose(logits, ref["logits"], rtol=1e-4, atol=1e-4 * scale)
    # The GPU default (chunked scan; 12 tokens in chunks of 5, the last one padded) as well.
    chunked = mamba.Mamba(dataclasses.replace(model.cfg, scan_mode="chunked", scan_chunk=5))
    logits = jax.jit(chunked.apply)({"params": params}, jnp.asarray(ref["tokens"]))
    np.testing.assert_allclose(logits, ref["logits"], rtol=1e-4, atol=1e-4 * scale)
    from jaxmodels.generate import greedy

    out = greedy(model, params, jnp.asarray(ref["prompt"]), ref["greedy"].shape[1] - ref["prompt"].shape[1])
    np.testing.assert_array_equal(np.asarray(out), ref["greedy"])


def test_flops_per_token_counts_params_and_scan():
    cfg = build_model(dict(name="mamba", size="mamba-130m")).cfg
    n = mamba.num_params(cfg)
    assert 125e6 < n < 135e6  # "130m"
    flops = build_model(dict(name="mamba", size="mamba-130m")).flops_per_token(1024)
    assert 6 * n < flops < 6.5 * n


def test_configs_build():
    from jaxmodels.config import load_config

    for spec, layers in (("configs/mamba_130m.py", 24), ("configs/mamba_130m.py:smoke", 2)):
        cfg = load_config(os.path.join(os.path.dirname(__file__), "..", "..", spec))
        assert build_model(cfg.model).cfg.n_layer == layers
