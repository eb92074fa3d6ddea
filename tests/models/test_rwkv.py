"""RWKV-4 and RWKV-7: decoding with the state == full forward; RWKV-4 logits == transformers."""
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


def test_rwkv4_init_and_shapes():
    model = build_model(TINY4)
    tokens = jax.random.randint(jax.random.key(0), (2, 8), 0, 50)
    params = model.init(jax.random.key(1), tokens)["params"]
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
    chex.assert_shape(logits, (2, 8, 50))


@pytest.mark.parametrize("scan_mode", ["sequential", "chunked"])
def test_rwkv4_prefill_and_steps_equal_full_forward(scan_mode):
    model = build_model(dict(TINY4, scan_mode=scan_mode))
    tokens = jax.random.randint(jax.random.key(0), (2, 9), 0, 50)
    params = _perturbed(model.init(jax.random.key(1), tokens)["params"])
    full = jax.jit(model.apply)({"params": params}, tokens)
    stepped, state = _prefill_then_steps(model, params, tokens, 4)
    np.testing.assert_allclose(stepped, full, rtol=1e-5, atol=1e-5)
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
    out = greedy(model, params, jnp.asarray(ref["prompt"]), ref["greedy"].shape[1] - ref["prompt"].shape[1])
    np.testing.assert_array_equal(np.asarray(out), ref["greedy"])
