"""RetNet: parallel == recurrent == chunkwise (outputs, states, gradients); decoding == forward."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmodels.layers.headnorm import HeadNorm
from jaxmodels.layers.xpos import xpos_rotate
from jaxmodels.models import build_model, retnet

TINY = dict(name="retnet", vocab_size=50, d_model=32, n_layer=2, n_head=2, d_value=48, d_ffn=64,
            chunk_size=4)
MODES = ("parallel", "recurrent", "chunkwise")


def _qkv(T=11, H=2, Dk=4, Dv=6, seed=0):
    ks = jax.random.split(jax.random.key(seed), 4)
    q = jax.random.normal(ks[0], (2, T, H, Dk))
    k = jax.random.normal(ks[1], (2, T, H, Dk))
    v = jax.random.normal(ks[2], (2, T, H, Dv))
    S0 = jax.random.normal(ks[3], (2, H, Dk, Dv))
    return q, k, v, S0


def test_decays_follow_the_paper():
    np.testing.assert_allclose(jnp.exp(retnet.log_gammas(4)), 1 - 2.0 ** -np.arange(5, 9), rtol=1e-7)


def test_three_forms_agree_with_gradients():
    q, k, v, S0 = _qkv()
    log_g = retnet.log_gammas(2)
    g_out = jax.random.normal(jax.random.key(7), v.shape)

    def loss(q, k, v, form):
        zeros = jnp.zeros_like(S0)
        if form == "parallel":
            o = retnet.retention_parallel(q, k, v, log_g)
        elif form == "recurrent":
            o, _ = retnet.retention_recurrent(q, k, v, log_g, zeros, mode="sequential")
        else:  # 11 steps in chunks of 4: two full chunks and a tail of 3
            o, _ = retnet.retention_chunkwise(q, k, v, log_g, zeros, 4)
        return jnp.sum(o * g_out), o

    grad_fn = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True), static_argnums=3)
    (_, ref), g_ref = grad_fn(q, k, v, "parallel")
    for form in ("recurrent", "chunkwise"):
        (_, o), g = grad_fn(q, k, v, form)
        np.testing.assert_allclose(o, ref, rtol=1e-5, atol=1e-5)
        for x, y in zip(g, g_ref):
            np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5)


def test_states_agree_and_carry_over():
    q, k, v, S0 = _qkv()
    log_g = retnet.log_gammas(2)
    o_r, S_r = jax.jit(lambda *a: retnet.retention_recurrent(*a, mode="sequential"))(q, k, v, log_g, S0)
    chunkwise = jax.jit(retnet.retention_chunkwise, static_argnums=5)
    o_c, S_c = chunkwise(q, k, v, log_g, S0, 4)
    np.testing.assert_allclose(o_c, o_r, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(S_c, S_r, rtol=1e-5, atol=1e-5)
    # Two halves with the state in between == one pass.
    o1, S1 = chunkwise(q[:, :6], k[:, :6], v[:, :6], log_g, S0, 4)
    o2, S2 = chunkwise(q[:, 6:], k[:, 6:], v[:, 6:], log_g, S1, 4)
    np.testing.assert_allclose(jnp.concatenate([o1, o2], 1), o_c, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(S2, S_c, rtol=1e-5, atol=1e-5)


def test_rotation_is_relative():
    x = jax.random.normal(jax.random.key(0), (1, 1, 1, 8))
    y = jax.random.normal(jax.random.key(1), (1, 1, 1, 8))
    dot = lambda n, m: float(jnp.sum(xpos_rotate(x, jnp.array([n])) * xpos_rotate(y, jnp.array([m]))))
    np.testing.assert_allclose(dot(7, 3), dot(104, 100), rtol=1e-4)
    assert abs(dot(7, 3) - dot(7, 5)) > 1e-3


def test_head_norm_normalises_each_head():
    x = 3.0 + 5.0 * jax.random.normal(jax.random.key(0), (2, 3, 4, 8))
    y = HeadNorm(kind="layer").apply({"params": {"scale": jnp.ones(32), "bias": jnp.zeros(32)}}, x)
    np.testing.assert_allclose(jnp.mean(y, -1), 0.0, atol=1e-5)
    np.testing.assert_allclose(jnp.std(y, -1), 1.0, rtol=1e-3)


@pytest.fixture(scope="module")
def models_and_params():
    tokens = jax.random.randint(jax.random.key(0), (2, 11), 0, 50)
    models = {m: build_model(dict(TINY, retention_mode=m)) for m in MODES}
    params = jax.jit(models["parallel"].init)(jax.random.key(1), tokens)["params"]
    return tokens, models, params


def test_model_forms_agree(models_and_params):
    tokens, models, params = models_and_params
    assert sum(x.size for x in jax.tree.leaves(params)) == retnet.num_params(models["parallel"].cfg)
    outs = {m: jax.jit(models[m].apply)({"params": params}, tokens) for m in MODES}
    chex.assert_shape(outs["parallel"], (2, 11, 50))
    for m in ("recurrent", "chunkwise"):
        np.testing.assert_allclose(outs[m], outs["parallel"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", ["parallel", "recurrent"])
def test_prefill_and_steps_equal_full_forward(models_and_params, mode):
    tokens, models, params = models_and_params
    model = models[mode]
    full = jax.jit(model.apply)({"params": params}, tokens)
    decode = jax.jit(lambda p, x, s, pos: model.apply({"params": p}, x, decode_state=s, pos=pos))
    state = model.init_decode_state(2, 11)
    chex.assert_shape(state["S"], (2, 2, 2, 16, 24))
    logits, state = decode(params, tokens[:, :5], state, jnp.int32(0))
    outs = [logits]
    for t in range(5, 11):
        logits, state = decode(params, tokens[:, t:t + 1], state, jnp.int32(t))
        outs.append(logits)
    np.testing.assert_allclose(jnp.concatenate(outs, 1), full, rtol=1e-5, atol=1e-5)


def test_sizes_match_the_paper():
    for size, billions in (("xl", 1.3), ("3b", 2.7), ("7b", 6.7)):
        cfg = build_model(dict(name="retnet", size=size)).cfg
        n = retnet.num_params(cfg) - 2 * cfg.vocab_size * cfg.d_model  # non-embedding
        assert abs(n / 1e9 - billions) / billions < 0.15, (size, n)


def test_configs_build():
    import os

    from jaxmodels.config import load_config

    root = os.path.join(os.path.dirname(__file__), "..", "..")
    for spec, layers in (("configs/retnet_base.py", 6), ("configs/retnet_base.py:smoke", 2)):
        assert build_model(load_config(os.path.join(root, spec)).model).cfg.n_layer == layers
