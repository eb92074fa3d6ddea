"""GPT-2 model and the shared layers it is built from (norms, MLPs, attention)."""
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmodels.config import ConfigError
from jaxmodels.layers import attention as attention_lib
from jaxmodels.layers.mlp import GeluMLP, SwiGLUMLP
from jaxmodels.layers.norms import LayerNorm, RMSNorm
from jaxmodels.models import build_model
from jaxmodels.models.gpt import SIZES, Block, Config, num_params

TINY = dict(name="gpt", vocab_size=96, block_size=32, n_layer=2, n_head=2, n_embd=32)


@pytest.fixture(scope="module")
def tiny():
    model = build_model(TINY)
    tokens = jax.random.randint(jax.random.key(1), (2, 16), 0, 96, dtype=jnp.int32)
    params = jax.jit(model.init)(jax.random.key(0), tokens)["params"]
    return model, params, tokens


@pytest.fixture(scope="module")
def tiny_fwd(tiny):
    """One compiled forward for the tiny model on [2, 16] tokens, shared by the tests."""
    model = tiny[0]
    return jax.jit(lambda p, t: model.apply({"params": p}, t))


# ----------------------------------------------------------------------------- norms, MLPs
def init_apply(module, x, seed=0, perturb=0.0):
    """(params, y) as numpy from one compiled init + apply; `perturb` shifts every param so
    unit scales / zero biases cannot hide a missing term."""
    def run(x):
        params = module.init(jax.random.key(seed), x)["params"]
        params = jax.tree.map(lambda a: a + perturb * jnp.sin(jnp.arange(a.size) + 1.0).reshape(a.shape), params)
        return params, module.apply({"params": params}, x)
    params, y = jax.jit(run)(x)
    return jax.tree.map(np.asarray, params), y


def np_gelu_exact(x):
    return 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))


def test_layernorm_matches_formula_and_keeps_dtype():
    x = np.random.default_rng(0).normal(size=(2, 5, 16)).astype(np.float32) * 3 + 1
    p, y = init_apply(LayerNorm(), jnp.asarray(x), perturb=0.5)
    chex.assert_shape(y, (2, 5, 16))
    xn = x.astype(np.float64)
    ref = (xn - xn.mean(-1, keepdims=True)) / np.sqrt(xn.var(-1, keepdims=True) + 1e-5)
    ref = ref * p["scale"] + p["bias"]
    np.testing.assert_allclose(y, ref, atol=1e-5)
    _, y16 = init_apply(LayerNorm(), jnp.asarray(x, jnp.bfloat16), perturb=0.5)
    assert y16.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(y16, np.float32), ref, atol=0.05)
    p, _ = init_apply(LayerNorm(use_bias=False), jnp.asarray(x))
    assert set(p) == {"scale"}


def test_rmsnorm_matches_formula():
    x = np.random.default_rng(1).normal(size=(3, 8)).astype(np.float32) * 2
    norm = RMSNorm(eps=1e-5, scale_init=lambda k, s, d: jnp.full(s, 2.0, d))
    p, y = init_apply(norm, jnp.asarray(x))
    np.testing.assert_array_equal(p["scale"], np.full((8,), 2.0))
    xn = x.astype(np.float64)
    np.testing.assert_allclose(y, 2.0 * xn / np.sqrt((xn ** 2).mean(-1, keepdims=True) + 1e-5), rtol=1e-5)


def test_mlps_shapes_names_and_math():
    x = np.random.default_rng(2).normal(size=(2, 4, 8)).astype(np.float32)
    p, y = init_apply(GeluMLP(gelu="exact"), jnp.asarray(x), perturb=0.01)
    chex.assert_shape([p["fc"]["kernel"], p["proj"]["kernel"], y], [(8, 32), (32, 8), (2, 4, 8)])
    h = np_gelu_exact(x.astype(np.float64) @ p["fc"]["kernel"] + p["fc"]["bias"])
    np.testing.assert_allclose(y, h @ p["proj"]["kernel"] + p["proj"]["bias"], atol=1e-5)

    p, y = init_apply(SwiGLUMLP(hidden=24), jnp.asarray(x))
    assert set(p) == {"gate_proj", "up_proj", "down_proj"} and "bias" not in p["gate_proj"]
    chex.assert_shape([p["gate_proj"]["kernel"], p["down_proj"]["kernel"], y], [(8, 24), (24, 8), (2, 4, 8)])
    gate = x.astype(np.float64) @ p["gate_proj"]["kernel"]
    ref = (gate / (1 + np.exp(-gate)) * (x @ p["up_proj"]["kernel"])) @ p["down_proj"]["kernel"]
    np.testing.assert_allclose(y, ref, atol=1e-5)


# ----------------------------------------------------------------------------- attention
# Jitted so each case compiles once instead of dispatching (and compiling) op by op.
attention = jax.jit(attention_lib.attention, static_argnames=("causal", "window", "implementation", "dropout_rate"))


def naive_attention(q, k, v, window=None, q_offset=0, kv_len=None):
    """Loop-free numpy reference: repeat kv heads, mask by absolute positions."""
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    B, T, H, D = q.shape
    S, K = k.shape[1], k.shape[2]
    k = np.repeat(k, H // K, axis=2)
    v = np.repeat(v, H // K, axis=2)
    logits = np.einsum("bthd,bshd->bhts", q, k) / math.sqrt(D)
    qpos = q_offset + np.arange(T)[:, None]
    kpos = np.arange(S)[None, :]
    mask = kpos <= qpos
    if window is not None:
        mask &= qpos - kpos < window
    if kv_len is not None:
        mask &= kpos < kv_len
    logits = np.where(mask, logits, -np.inf)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    return np.einsum("bhts,bshd->bthd", probs, v)


@pytest.mark.parametrize("kv_heads,window", [(4, None), (2, None), (1, 3), (2, 5)])
def test_attention_gqa_and_window_match_naive(kv_heads, window):
    kq, kk, kv = jax.random.split(jax.random.key(kv_heads * 10 + (window or 0)), 3)
    q = jax.random.normal(kq, (2, 8, 4, 16))
    k = jax.random.normal(kk, (2, 8, kv_heads, 16))
    v = jax.random.normal(kv, (2, 8, kv_heads, 16))
    ref = naive_attention(q, k, v, window=window)
    for impl in (None, "xla", "einsum"):
        out = attention(q, k, v, window=window, implementation=impl)
        chex.assert_shape(out, (2, 8, 4, 16))
        np.testing.assert_allclose(out, ref, atol=2e-5)
    # Decoding form: 3 queries at absolute positions 4..6 over a 12-slot cache with 7 valid.
    cache_k = jnp.concatenate([k[:, :7], jnp.full((2, 5, kv_heads, 16), 9.0)], axis=1)
    cache_v = jnp.concatenate([v[:, :7], jnp.full((2, 5, kv_heads, 16), 9.0)], axis=1)
    out = attention(q[:, 4:7], cache_k, cache_v, q_offset=jnp.int32(4), kv_len=jnp.int32(7), window=window)
    np.testing.assert_allclose(out, ref[:, 4:7], atol=2e-5)


def test_attention_dropout_is_scaled_and_keyed():
    q = jax.random.normal(jax.random.key(0), (1, 6, 2, 8))
    ones_v = jnp.ones((1, 6, 2, 8))
    # With v = 1 every output is sum(kept probs)/(1-p): mean over many entries stays ~1.
    out = attention(q, q, ones_v, dropout_rate=0.5, dropout_rng=jax.random.key(3))
    again = attention(q, q, ones_v, dropout_rate=0.5, dropout_rng=jax.random.key(3))
    chex.assert_trees_all_equal(out, again)
    assert not np.allclose(out, 1.0)
    no_rng = attention(q, q, ones_v, dropout_rate=0.5)
    np.testing.assert_allclose(no_rng, 1.0, atol=1e-6)


# ----------------------------------------------------------------------------- the model
def test_block_and_model_shapes(tiny, tiny_fwd):
    model, params, tokens = tiny
    cfg = model.cfg
    bp, (y, cache) = init_apply(Block(cfg), jnp.ones((2, 5, 32)))
    chex.assert_shape([y, bp["attn"]["c_attn"]["kernel"]], [(2, 5, 32), (32, 96)])
    assert cache is None
    logits = tiny_fwd(params, tokens)
    chex.assert_shape(logits, (2, 16, 96))
    assert logits.dtype == jnp.float32
    chex.assert_shape(params["h"]["attn"]["c_attn"]["kernel"], (2, 32, 96))
    chex.assert_shape(params["h"]["mlp"]["proj"]["kernel"], (2, 128, 32))
    chex.assert_shape([params["wte"], params["wpe"]], [(96, 32), (32, 32)])
    state = model.init_decode_state(2, 20)
    chex.assert_shape([state["k"], state["v"]], [(2, 2, 20, 2, 16)] * 2)
    with pytest.raises(ValueError, match="block_size"):
        model.init_decode_state(1, 33)


def test_causality(tiny, tiny_fwd):
    model, params, tokens = tiny
    t = 9
    changed = tokens.at[:, t].set((tokens[:, t] + 7) % 96)
    a, b = tiny_fwd(params, tokens), tiny_fwd(params, changed)
    np.testing.assert_array_equal(a[:, :t], b[:, :t])
    assert np.all(np.abs(a[:, t:] - b[:, t:]).max(axis=-1) > 1e-6)


def test_init_statistics(tiny):
    params = jax.tree.map(np.asarray, tiny[1])
    h = params["h"]
    resid_std = 0.02 / math.sqrt(2 * 2)  # n_layer = 2
    # Tolerance 8%: the smallest tensor (wpe, 1024 draws) has a 2.2% std error.
    for kernel, std in [(h["attn"]["c_proj"]["kernel"], resid_std), (h["mlp"]["proj"]["kernel"], resid_std),
                        (h["attn"]["c_attn"]["kernel"], 0.02), (h["mlp"]["fc"]["kernel"], 0.02),
                        (params["wte"], 0.02), (params["wpe"], 0.02)]:
        assert abs(kernel.std() / std - 1) < 0.08, (kernel.shape, kernel.std(), std)
        assert abs(kernel.mean()) < 0.1 * std
    for bias in (h["attn"]["c_attn"]["bias"], h["mlp"]["proj"]["bias"], params["ln_f"]["bias"]):
        assert np.abs(bias).max() == 0.0
    assert np.all(h["ln_1"]["scale"] == 1.0)
    # Each layer draws its own weights (scanned init splits the rng per layer).
    assert not np.allclose(h["attn"]["c_attn"]["kernel"][0], h["attn"]["c_attn"]["kernel"][1])


def test_param_count_and_flops(tiny):
    model, params, _ = tiny
    cfg = model.cfg
    n = sum(int(a.size) for a in jax.tree.leaves(params))
    assert n == num_params(cfg)
    assert model.flops_per_token(16) == 6 * (n - params["wpe"].size) + 12 * 2 * 32 * 16
    # Published counts: GPT-2 124M has 124,439,808 params (nanoGPT reports 123.65M without wpe).
    assert num_params(Config(**SIZES["gpt2"])) == 124_439_808
    assert num_params(Config(**SIZES["gpt2"]), include_positions=False) == 123_653_376
    assert num_params(Config(**SIZES["gpt2-xl"])) == 1_557_611_200
    nobias = build_model(dict(TINY, bias=False))
    p = jax.eval_shape(nobias.init, jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"]
    assert sum(int(a.size) for a in jax.tree.leaves(p)) == num_params(nobias.cfg)
    assert "bias" not in p["ln_f"] and "bias" not in p["h"]["mlp"]["fc"]


def test_decode_logits_match_full_forward(tiny, tiny_fwd):
    model, params, tokens = tiny
    full = tiny_fwd(params, tokens)
    step = jax.jit(lambda s, t, pos: model.apply({"params": params}, t, decode_state=s, pos=pos))
    # Prefill 10 tokens at once, then 6 single-token steps.
    logits, state = step(model.init_decode_state(2, 16), tokens[:, :10], jnp.int32(0))
    np.testing.assert_allclose(logits, full[:, :10], atol=1e-5)
    for t in range(10, 16):
        logits, state = step(state, tokens[:, t:t + 1], jnp.int32(t))
        np.testing.assert_allclose(logits[:, 0], full[:, t], atol=1e-5)


def test_dropout_train_mode(tiny, tiny_fwd):
    model = build_model(dict(TINY, dropout=0.3))
    _, params, tokens = tiny
    fwd = jax.jit(lambda r, train: model.apply({"params": params}, tokens, train=train,
                                               rngs={"dropout": r}), static_argnums=1)
    a, b, c = fwd(jax.random.key(1), True), fwd(jax.random.key(1), True), fwd(jax.random.key(2), True)
    chex.assert_trees_all_equal(a, b)
    assert float(jnp.abs(a - c).max()) > 1e-3
    # Evaluation ignores dropout: same logits as the dropout-free model.
    np.testing.assert_allclose(fwd(jax.random.key(1), False), tiny_fwd(params, tokens), atol=1e-6)


def test_unrolled_and_remat_match_scanned(tiny, tiny_fwd):
    model, params, tokens = tiny
    # Same param layout (stacked [n_layer] axis), same numbers, loop unrolled and rematted.
    # ("auto", the default, unrolls on a CPU: compare the explicit loop too.)
    for variant in (build_model(dict(TINY, scan_layers=False, remat="nothing_saveable")),
                    build_model(dict(TINY, scan_layers=True))):
        logits = jax.jit(lambda p, t: variant.apply({"params": p}, t))(params, tokens)
        np.testing.assert_allclose(logits, tiny_fwd(params, tokens), atol=1e-5)


def test_bfloat16_compute_gives_f32_logits_close_to_f32(tiny, tiny_fwd):
    model, params, tokens = tiny
    bf16 = build_model(dict(TINY, dtype="bfloat16"))
    logits = jax.jit(lambda p, t: bf16.apply({"params": p}, t))(params, tokens)
    assert logits.dtype == jnp.float32
    ref = tiny_fwd(params, tokens)
    assert float(jnp.abs(logits - ref).max()) < 0.05 * float(jnp.abs(ref).max()) + 0.02


def test_sizes_and_config_errors():
    m = build_model({"name": "gpt", "size": "shakespeare-char"})
    assert (m.cfg.n_layer, m.cfg.n_head, m.cfg.n_embd, m.cfg.block_size, m.cfg.dropout) == (6, 6, 384, 256, 0.2)
    assert m.cfg.gelu == "exact" and not m.cfg.bias
    m = build_model({"name": "gpt", "size": "baby-shakespeare", "vocab_size": 80})
    assert (m.cfg.n_layer, m.cfg.n_embd, m.cfg.block_size, m.cfg.vocab_size) == (4, 128, 64, 80)
    assert SIZES["gpt2-medium"]["n_layer"] == 24 and SIZES["gpt-mini"]["n_embd"] == 192
    with pytest.raises(ConfigError, match="n_embd"):
        build_model({"name": "gpt", "n_embdd": 3})
    with pytest.raises(ConfigError, match="valid"):
        build_model({"name": "gpt", "gelu": "relu"})
    with pytest.raises(ConfigError, match="gpt2-xl"):
        build_model({"name": "gpt", "size": "gpt3"})
