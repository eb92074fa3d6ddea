"""Chunked (XLA) and Pallas (interpret mode) cross-entropy against the dense reference:
per-token loss, accuracy and gradients for hidden, weight and bias; f32 to 1e-5, bf16
matmuls to 2e-2 relative (bf16 has an 8-bit mantissa; both sides round the same operands
but sum in different orders). Then the LM task's loss through the head inputs against the
full-logits loss for every causal family (1e-5)."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmodels.config import load_config
from jaxmodels.kernels import dispatch
from jaxmodels.kernels.cross_entropy import (cross_entropy_chunked, cross_entropy_dense,
                                             cross_entropy_pallas, vocab_chunks)
from jaxmodels.tasks import build_task

FORMS = {
    # chunk / blocks that do not divide N or V: ragged last chunk, padded tiles.
    "chunked": functools.partial(cross_entropy_chunked, chunk=48),
    "pallas": functools.partial(cross_entropy_pallas, block_n=16, block_v=32, interpret=True),
}


def problem(N=37, C=24, V=203, seed=0):
    k = jax.random.split(jax.random.key(seed), 5)
    return (jax.random.normal(k[0], (N, C)), 0.3 * jax.random.normal(k[1], (V, C)),
            jax.random.normal(k[2], (V,)), jax.random.randint(k[3], (N,), 0, V),
            jax.random.normal(k[4], (N,)))


def value_and_grads(f, h, w, b, t, g, **kw):
    def loss(h, w, b):
        nll, correct = f(h, w, t, bias_V=b, **kw)
        return jnp.sum(nll * g), (nll, correct)
    (_, (nll, correct)), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))(h, w, b)
    return nll, correct, grads


@pytest.mark.parametrize("form", sorted(FORMS))
@pytest.mark.parametrize("softcap", [0.0, 4.0])
def test_matches_dense_f32(form, softcap):
    h, w, b, t, g = problem()
    ref = value_and_grads(cross_entropy_dense, h, w, b, t, g, softcap=softcap)
    out = value_and_grads(FORMS[form], h, w, b, t, g, softcap=softcap)
    np.testing.assert_allclose(out[0], ref[0], atol=1e-5, rtol=1e-5)
    np.testing.assert_array_equal(out[1], ref[1])
    for got, want in zip(out[2], ref[2]):
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


# The default run's one bf16 kernel check is the Pallas form; the other bf16 kernel checks
# (chunked here, attention, norms, NF4, selective scan) run with -m slow.
@pytest.mark.parametrize("form", [pytest.param("chunked", marks=pytest.mark.slow), "pallas"])
def test_matches_dense_bf16(form):
    h, w, b, t, g = problem(seed=1)
    ref = value_and_grads(cross_entropy_dense, h, w, b, t, g, dtype=jnp.bfloat16)
    out = value_and_grads(FORMS[form], h, w, b, t, g, dtype=jnp.bfloat16)
    np.testing.assert_allclose(out[0], ref[0], atol=2e-2, rtol=2e-2)
    for got, want in zip(out[2], ref[2]):
        scale = float(jnp.max(jnp.abs(want)))
        np.testing.assert_allclose(got, want, atol=2e-2 * scale)


def test_no_bias_and_reference_against_numpy():
    h, w, _, t, _ = problem(N=9, V=50)
    logits = np.asarray(h, np.float64) @ np.asarray(w, np.float64).T
    lse = np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1)) + logits.max(1)
    want = lse - logits[np.arange(9), np.asarray(t)]
    for f in [cross_entropy_dense, *FORMS.values()]:
        nll, correct = f(h, w, t)
        np.testing.assert_allclose(nll, want, atol=1e-5, rtol=1e-5)
        np.testing.assert_array_equal(correct, (logits.argmax(1) == np.asarray(t)).astype(np.float32))


def test_chunked_bf16_head_gradient_stays_bf16():
    """A bf16 head's gradient leaves each vocabulary chunk in bf16: no whole f32 copy of the
    weight's gradient (stacked in f32 and cast after the scan, it was 1 GiB for a 128k x
    2048 head, then a bf16 copy beside it)."""
    N, C, V = 64, 256, 32768
    h, w = jax.ShapeDtypeStruct((N, C), jnp.bfloat16), jax.ShapeDtypeStruct((V, C), jnp.bfloat16)
    targets = jnp.zeros((N,), jnp.int32)
    grad = jax.grad(lambda h, w: jnp.sum(cross_entropy_chunked(h, w, targets, chunk=4096)[0]), argnums=(0, 1))
    text = str(jax.make_jaxpr(grad)(h, w))   # 8 chunks of 4096 rows
    assert "bf16[8,4096,256]" in text and "f32[8,4096,256]" not in text
    temp = jax.jit(grad).lower(h, w).compile().memory_analysis().temp_size_in_bytes
    assert temp < 3.3 * V * C * 2, temp / (V * C * 2)   # measured 2.45 (4.2 before)


def test_vocab_chunks_prefers_divisors():
    assert vocab_chunks(50304, 8192) == (8, 6288)   # GPT-2's padded vocabulary: no padding
    assert vocab_chunks(203, 48) == (7, 29)
    n, k = vocab_chunks(211, 48)                   # prime: padded
    assert n * k >= 211 and k <= 48 + 5


SLOW = pytest.mark.slow  # 30-50 s each on 2 busy cores; the head swap is one line per family


@pytest.mark.parametrize("spec", [
    "configs/gpt2_124m.py:smoke", pytest.param("configs/llama_lora_tiny.py:smoke", marks=SLOW),
    pytest.param("configs/mamba_130m.py:smoke", marks=SLOW), pytest.param("configs/rwkv4_169m.py:smoke", marks=SLOW),
    pytest.param("configs/rwkv7_l12_d768.py:smoke", marks=SLOW), pytest.param("configs/retnet_base.py:smoke", marks=SLOW)])
def test_head_loss_equals_full_logits_loss(spec):
    """Every causal family: the loss from its head inputs (chunked cross-entropy) equals the
    loss from its logits, value and gradients."""
    from jaxmodels.models import build_model
    from jaxmodels.tasks.lm import head_cross_entropy, token_cross_entropy

    model_cfg = load_config(spec).model.to_dict()
    if model_cfg["name"] == "llama":  # LoRA everywhere but the head (a LoRA head gives logits)
        model_cfg["lora_targets"] = ("q", "k", "v", "o", "gate", "up", "down")
    model = build_model(model_cfg)
    V = model.cfg.vocab_size
    k1, k2 = jax.random.split(jax.random.key(0))
    tokens = jax.random.randint(k1, (2, 16), 0, V)
    targets = jax.random.randint(k2, (2, 16), 0, V)
    mask = jnp.ones((2, 16)).at[1, 5:].set(0.0)
    params = model.init(jax.random.key(0), tokens)["params"]

    def head_loss(p):
        return head_cross_entropy(model.apply({"params": p}, tokens, head_input=True), targets, mask)[0]

    def dense_loss(p):
        return token_cross_entropy(model.apply({"params": p}, tokens), targets, mask)[0]

    loss_c, grads_c = jax.jit(jax.value_and_grad(head_loss))(params)
    loss_d, grads_d = jax.jit(jax.value_and_grad(dense_loss))(params)
    np.testing.assert_allclose(loss_c, loss_d, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(grads_c), jax.tree.leaves(grads_d)):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4)


def test_lm_task_uses_chunked_loss_unless_dense(tmp_path):
    def task(mode):
        cfg = load_config("configs/gpt2_124m.py:smoke", [f"data.cache_dir={tmp_path}/cache", "data.max_bytes=20000",
                                                         "data.num_threads=1", f"kernels.cross_entropy={mode}"])
        return build_task(cfg)
    assert task("xla").head_input_supported()
    assert task("pallas").head_input_supported()
    assert not task("dense").head_input_supported()
    # auto: dense on a CPU (the chunked form's extra matmul is slower there), chunked elsewhere.
    assert task("auto").head_input_supported() == (jax.default_backend() != "cpu")
    dispatch.configure(None)


def test_llama_untied_head_gives_head_input():
    from jaxmodels.layers.lm_head import HeadInput, head_logits
    from jaxmodels.models import build_model

    model = build_model(dict(name="llama", vocab_size=64, dim=16, n_layers=1, n_heads=2, n_kv_heads=1,
                             hidden_dim=32, max_len=16, tie_embeddings=False))
    tokens = jnp.arange(8, dtype=jnp.int32)[None]
    params = model.init(jax.random.key(0), tokens)["params"]
    h = model.apply({"params": params}, tokens, head_input=True)
    assert isinstance(h, HeadInput)
    np.testing.assert_allclose(head_logits(h), model.apply({"params": params}, tokens), atol=1e-6)
    lora_head = build_model(dict(model.cfg.__dict__, name="llama", lora_rank=2, lora_targets=("head",)))
    params = lora_head.init(jax.random.key(0), tokens)["params"]
    assert lora_head.apply({"params": params}, tokens, head_input=True).shape == (1, 8, 64)


def test_bad_kernel_mode_is_a_clear_error():
    from jaxmodels.config import ConfigError
    with pytest.raises(ConfigError, match="kernels.attention='fast'; valid: auto, pallas, xla, cpu"):
        dispatch.configure({"attention": "fast"})
    dispatch.configure(None)
