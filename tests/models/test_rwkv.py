"""RWKV-4 and RWKV-7: decoding with the state == full forward; RWKV-4 logits == transformers."""
import dataclasses
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmodels.models import build_model, rwkv4

FIXTURE = os.path.join(os.path.dirname(__file__), "..", "fixtures", "rwkv")
TINY4 = dict(name="rwkv4", vocab_size=50, d_model=32, n_layer=2, scan_chunk=4)


def _perturbed(params, seed=3, scale=0.1):
    """RWKV init zeroes several projections; perturb so every path carries signal."""
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return jax.tree.unflatten(tree, [x + scale * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])


def _prefill_then_steps(model, params, tokens, n_prefill):
    decode = jax.jit(lambda p, x, s, pos: model.apply({"params": p}, x, decode_state=s, pos=pos))
    state = model.init_decode_state(tokens.shape[0], tokens.shape[1])
    logits, state = decode(params, tokens[:, :n_prefill], state, jnp.int32(0))
    outs = [logits]
    for t in range(n_prefill, tokens.shape[1]):
        logits, state = decode(params, tokens[:, t:t + 1], state, jnp.int32(t))
        outs.append(logits)
    return jnp.concatenate(outs, 1), state


@pytest.fixture(scope="module")
def rwkv4_tiny():
    model = build_model(dict(TINY4, scan_mode="sequential"))
    tokens = jax.random.randint(jax.random.key(0), (2, 9), 0, 50)
    return model, tokens, jax.jit(model.init)(jax.random.key(1), tokens)["params"]


def test_rwkv4_init_and_shapes(rwkv4_tiny):
    model, tokens, params = rwkv4_tiny
    assert sum(x.size for x in jax.tree.leaves(params)) == rwkv4.num_params(model.cfg)
    att = params["blocks"]["att"]
    chex.assert_shape(att["time_decay"], (2, 32))
    # RWKV-LM's layer-dependent init: decay from -5 (channel 0) to 3 (last channel).
    np.testing.assert_allclose(att["time_decay"][:, 0], -5.0)
    np.testing.assert_allclose(att["time_decay"][:, -1], 3.0, rtol=1e-6)
    np.testing.assert_allclose(att["time_mix_v"][1] - att["time_mix_k"][1], 0.3, rtol=1e-5)
    np.testing.assert_array_equal(att["key"]["kernel"], 0.0)
    assert float(jnp.abs(params["emb"]).max()) <= 1e-4
    logits = jax.jit(model.apply)({"params": params}, tokens)
    chex.assert_shape(logits, (2, 9, 50))


def test_rwkv4_prefill_and_steps_equal_full_forward(rwkv4_tiny):
    model, tokens, params = rwkv4_tiny
    params = _perturbed(params)
    full = jax.jit(model.apply)({"params": params}, tokens)
    stepped, state = _prefill_then_steps(model, params, tokens, 4)
    np.testing.assert_allclose(stepped, full, rtol=1e-5, atol=1e-5)
    chunked = build_model(dict(TINY4, scan_mode="chunked"))  # the GPU default
    np.testing.assert_allclose(jax.jit(chunked.apply)({"params": params}, tokens), full, rtol=1e-5, atol=1e-5)
    chex.assert_shape(state["num"], (2, 2, 32))
    chex.assert_trees_all_equal_shapes(model.init_decode_state(2, 9), model.init_decode_state(2, 999))


def test_rwkv4_logits_and_greedy_match_transformers():
    from jaxmodels.convert import from_hf
    from jaxmodels.generate import greedy

    ref = np.load(os.path.join(FIXTURE, "reference.npz"))
    model, params = from_hf(FIXTURE)
    logits = jax.jit(model.apply)({"params": params}, jnp.asarray(ref["tokens"]))
    scale = np.abs(ref["logits"]).max()
    np.testing.assert_allclose(logits, ref["logits"], rtol=1e-4, atol=1e-4 * scale)
    # The GPU default (chunked scan; 12 tokens in chunks of 5, the last one padded) as well.
    chunked = rwkv4.RWKV4(dataclasses.replace(model.cfg, scan_mode="chunked", scan_chunk=5))
    logits = jax.jit(chunked.apply)({"params": params}, jnp.asarray(ref["tokens"]))
    np.testing.assert_allclose(logits, ref["logits"], rtol=1e-4, atol=1e-4 * scale)
    out = greedy(model, params, jnp.asarray(ref["prompt"]), ref["greedy"].shape[1] - ref["prompt"].shape[1])
    np.testing.assert_array_equal(np.asarray(out), ref["greedy"])


# ---------------------------------------------------------------- RWKV-7

from jaxmodels.models import rwkv7  # noqa: E402

TINY7 = dict(name="rwkv7", vocab_size=50, d_model=32, head_size=8, n_layer=2, chunk_size=4)


def _wkv7_inputs(T=11, seed=0):
    B, H, N = 2, 2, 4
    ks = jax.random.split(jax.random.key(seed), 7)
    r, k, v = (jax.random.normal(ks[i], (B, H, T, N)) for i in range(3))
    # The model's soft clamp: w in (exp(-e^-0.5), 1).
    w = jnp.exp(-jnp.exp(-jax.nn.softplus(-2 * jax.random.normal(ks[3], (B, H, T, N))) - 0.5))
    kk = jax.random.normal(ks[4], (B, H, T, N))
    kk = kk / jnp.linalg.norm(kk, axis=-1, keepdims=True)
    a = jax.nn.sigmoid(jax.random.normal(ks[5], (B, H, T, N)))
    S0 = jax.random.normal(ks[6], (B, H, N, N))
    return r, w, k, v, -kk, kk * a, S0


def test_wkv7_recurrent_matches_numpy_reference():
    """The RWKV-LM numpy update S = S·w - (S·κ̂)(κ̂a)ᵀ + v kᵀ, y = S r, in float64."""
    args = _wkv7_inputs(T=5)
    y, S_last = jax.jit(rwkv7.wkv7_recurrent)(*args)
    r, w, k, v, alpha, beta, S = (np.asarray(x, np.float64) for x in args)
    for t in range(5):
        S = (S * w[:, :, t, None, :] + (S @ alpha[:, :, t, :, None]) * beta[:, :, t, None, :]
             + v[:, :, t, :, None] * k[:, :, t, None, :])
        np.testing.assert_allclose(y[:, :, t], (S @ r[:, :, t, :, None])[..., 0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(S_last, S, rtol=1e-5, atol=1e-5)


def test_wkv7_chunked_equals_recurrent_with_gradients():
    args = _wkv7_inputs()
    g_y = jax.random.normal(jax.random.key(5), args[0].shape)

    def loss(args, chunked):
        y, S = (rwkv7.wkv7_chunked(*args, 4) if chunked else rwkv7.wkv7_recurrent(*args))
        return jnp.sum(y * g_y) + jnp.sum(S ** 2), (y, S)

    grad_fn = jax.jit(jax.grad(loss, has_aux=True), static_argnums=1)
    g_ref, (y_ref, S_ref) = grad_fn(args, False)
    g, (y, S) = grad_fn(args, True)  # 11 steps: chunks of 4, 4 and a tail of 3
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(S, S_ref, rtol=1e-5, atol=1e-5)
    for x, ref in zip(g, g_ref):
        np.testing.assert_allclose(x, ref, rtol=1e-4, atol=1e-4)


def test_rwkv7_init_shapes_and_layer_dependence(rwkv7_models):
    tokens, model, _, params = rwkv7_models
    assert sum(x.size for x in jax.tree.leaves(params)) == rwkv7.num_params(model.cfg)
    att = params["blocks"]["att"]
    chex.assert_shape(att["r_k"], (2, 4, 8))
    np.testing.assert_allclose(att["ln_x"]["scale"][:, 0], [(1 / 2) ** 0.7, 1.0], rtol=1e-6)
    assert not np.allclose(att["w0"][0], att["w0"][1])  # decay init depends on the layer
    np.testing.assert_array_equal(att["output"]["kernel"], 0.0)
    # The RWKV-LM suggestion for the LoRA ranks at C=768.
    big = rwkv7.Config()
    assert [big.lora(n) for n in ("decay", "aaa", "mv", "gate")] == [64, 64, 32, 128]


@pytest.fixture(scope="module")
def rwkv7_models():
    tokens = jax.random.randint(jax.random.key(0), (2, 9), 0, 50)
    chunked = build_model(TINY7)
    recurrent = build_model(dict(TINY7, wkv_mode="recurrent"))
    params = jax.jit(chunked.init)(jax.random.key(1), tokens)["params"]
    return tokens, chunked, recurrent, params


def test_rwkv7_chunked_model_equals_recurrent(rwkv7_models):
    tokens, chunked, recurrent, params = rwkv7_models
    params = _perturbed(params, scale=0.2)
    a = jax.jit(chunked.apply)({"params": params}, tokens)
    chex.assert_shape(a, (2, 9, 50))
    b = jax.jit(recurrent.apply)({"params": params}, tokens)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_rwkv7_prefill_and_steps_equal_full_forward(rwkv7_models):
    tokens, chunked, _, params = rwkv7_models
    params = _perturbed(params, scale=0.2)
    full = jax.jit(chunked.apply)({"params": params}, tokens)
    stepped, state = _prefill_then_steps(chunked, params, tokens, 4)
    np.testing.assert_allclose(stepped, full, rtol=1e-5, atol=1e-5)
    chex.assert_shape(state["S"], (2, 2, 4, 8, 8))


def test_configs_build():
    from jaxmodels.config import load_config

    root = os.path.join(os.path.dirname(__file__), "..", "..")
    for spec, layers, width in (("configs/rwkv4_169m.py", 12, 768), ("configs/rwkv7_l12_d768.py", 12, 768),
                                ("configs/rwkv4_169m.py:smoke", 2, 32), ("configs/rwkv7_l12_d768.py:smoke", 2, 32)):
        cfg = load_config(os.path.join(root, spec))
        model_cfg = build_model(cfg.model).cfg
        assert (model_cfg.n_layer, model_cfg.d_model) == (layers, width)
    assert load_config(os.path.join(root, "configs/rwkv7_l12_d768.py")).data.seq_len == 512  # MiniPile recipe
