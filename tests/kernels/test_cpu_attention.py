"""The C++ CPU attention (jaxmodels/kernels/cpu_attention.py) against the einsum path it replaces."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmodels.kernels import cpu_ffi, dispatch
from jaxmodels.kernels.cpu_attention import cpu_attention, supported
from jaxmodels.layers.attention import attention, attention_einsum, attention_mask

pytestmark = pytest.mark.skipif(not cpu_ffi.available(), reason=f"C++ CPU kernels: {cpu_ffi.reason()}")


def _qkv(seed, B, T, S, H, K, D):
    r = np.random.default_rng(seed)
    return (jnp.asarray(r.standard_normal((B, T, H, D)), jnp.float32),
            jnp.asarray(r.standard_normal((B, S, K, D)), jnp.float32),
            jnp.asarray(r.standard_normal((B, S, K, D)), jnp.float32))


def _value_and_grads(fn, q, k, v, w):
    out = fn(q, k, v)
    grads = jax.grad(lambda *a: jnp.sum(fn(*a) * w), (0, 1, 2))(q, k, v)
    return out, grads


# Shapes: a single query block and several (the kernel works in blocks of 128 queries, so 130 and
# 300 end in a partial block), T != S, grouped-query heads (H / K = 2, 3, 6), head dims 4-64.
@pytest.mark.parametrize("B,T,S,H,K,D,causal", [
    (2, 5, 5, 2, 2, 4, True),
    (2, 130, 130, 4, 2, 16, True),
    (3, 70, 90, 6, 3, 8, False),
    (1, 300, 300, 6, 1, 32, True),
    (1, 129, 129, 3, 3, 64, False),
])
def test_matches_the_einsum_path_forward_and_backward(B, T, S, H, K, D, causal):
    q, k, v = _qkv(0, B, T, S, H, K, D)
    w = jnp.asarray(np.random.default_rng(1).standard_normal((B, T, H, D)), jnp.float32)
    mask = attention_mask(T, S, causal=causal)
    want, want_grads = _value_and_grads(lambda *a: attention_einsum(*a, mask), q, k, v, w)
    got, got_grads = _value_and_grads(jax.jit(lambda *a: cpu_attention(*a, causal=causal)), q, k, v, w)
    np.testing.assert_allclose(got, want, atol=2e-6)
    for g, r in zip(got_grads, want_grads):
        np.testing.assert_allclose(g, r, atol=1e-5 * max(1.0, float(jnp.max(jnp.abs(r)))))


@pytest.mark.parametrize("causal,rate", [(True, 0.2), (False, 0.5)])
def test_dropout_drops_the_same_elements_as_the_einsum_path(causal, rate):
    """Same key -> same hash mask (jaxmodels.layers.dropout), so outputs and gradients agree."""
    B, T, H, K, D = 2, 140, 4, 2, 16
    q, k, v = _qkv(2, B, T, T, H, K, D)
    w = jnp.asarray(np.random.default_rng(3).standard_normal((B, T, H, D)), jnp.float32)
    key = jax.random.key(7)
    mask = attention_mask(T, T, causal=causal)
    want, want_grads = _value_and_grads(
        lambda *a: attention_einsum(*a, mask, dropout_rate=rate, dropout_rng=key), q, k, v, w)
    got, got_grads = _value_and_grads(
        lambda *a: cpu_attention(*a, causal=causal, dropout_rate=rate, dropout_rng=key), q, k, v, w)
    np.testing.assert_allclose(got, want, atol=3e-6)
    for g, r in zip(got_grads, want_grads):
        np.testing.assert_allclose(g, r, atol=1e-5 * max(1.0, float(jnp.max(jnp.abs(r)))))
    # ...and it really dropped something: another key gives another output.
    other = cpu_attention(q, k, v, causal=causal, dropout_rate=rate, dropout_rng=jax.random.key(8))
    assert float(jnp.max(jnp.abs(other - got))) > 1e-2


def test_auto_runs_the_kernel_on_a_cpu_and_xla_keeps_the_einsum_path():
    q, k, v = _qkv(4, 1, 20, 20, 2, 2, 16)
    trace = lambda: str(jax.make_jaxpr(lambda *a: attention(*a, causal=True))(q, k, v))
    assert dispatch.choice("attention") == "cpu"
    assert "jaxmodels_cpu_attention_fwd" in trace()
    np.testing.assert_allclose(attention(q, k, v, causal=True),
                               attention_einsum(q, k, v, attention_mask(20, 20)), atol=2e-6)
    dispatch.configure({"attention": "xla"})
    assert "jaxmodels_cpu_attention_fwd" not in trace()


def test_unsupported_cases_keep_the_einsum_path():
    q, k, v = _qkv(5, 1, 20, 20, 2, 2, 16)
    assert supported(q, k, v)
    assert not supported(q, k, v, window=4)
    assert not supported(q, k, v, softcap=30.0)
    assert not supported(q.astype(jnp.bfloat16), k.astype(jnp.bfloat16), v.astype(jnp.bfloat16))
    # A sliding window through the layer: traced without the custom call, same as the reference.
    dispatch.configure({"attention": "cpu"})
    jaxpr = str(jax.make_jaxpr(lambda *a: attention(*a, causal=True, window=4))(q, k, v))
    assert "jaxmodels_cpu_attention" not in jaxpr


def test_same_bits_in_every_call():
    """Two separately compiled programs, same inputs: identical outputs (no alignment effects)."""
    q, k, v = _qkv(8, 2, 200, 200, 4, 2, 32)
    a = jax.jit(lambda *x: cpu_attention(*x, causal=True))(q, k, v)
    b = jax.jit(lambda *x: cpu_attention(*x, causal=True) * 1.0)(q + 0.0, k, v)
    np.testing.assert_array_equal(a, b)


def test_under_remat_and_scan():
    """Inside jax.checkpoint (the trainer's remat) and lax.scan (layer stacks) it still differentiates."""
    q, k, v = _qkv(6, 2, 33, 33, 2, 1, 8)

    def layer(x, _):
        out = jax.checkpoint(lambda x: cpu_attention(x, k, v, causal=True))(x)
        return x + out, None

    def loss(fn):
        return lambda x: jnp.sum(jax.lax.scan(fn, x, None, length=3)[0] ** 2)

    def ref_layer(x, _):
        return x + attention_einsum(x, k, v, attention_mask(33, 33)), None

    np.testing.assert_allclose(jax.grad(loss(layer))(q), jax.grad(loss(ref_layer))(q), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("policy,forwards", [("dots_with_no_batch_dims_saveable", 1), ("nothing_saveable", 2)])
def test_dot_saving_remat_keeps_the_forward(policy, forwards):
    """The dot-saving policies keep the kernel's output and log-sum-exp, so the backward pass
    does not run the forward kernel again; nothing_saveable does rerun it."""
    from jaxmodels.layers import stack

    q, k, v = _qkv(9, 2, 40, 40, 2, 2, 8)
    w = jnp.asarray(np.random.default_rng(10).standard_normal((8, 3 * 8)), jnp.float32)

    def block(x):
        qkv = x @ w  # a dot, saved by the dot policies: q, k, v are cheap to rebuild from it
        q_, k_, v_ = jnp.split(qkv, 3, axis=-1)
        return jnp.sum(jnp.tanh(cpu_attention(q_, k_, v_, causal=True)))

    f = jax.checkpoint(block, policy=stack.REMAT_POLICIES[policy], prevent_cse=False)
    jaxpr = str(jax.make_jaxpr(jax.grad(f))(q))
    assert jaxpr.count("jaxmodels_cpu_attention_fwd") == forwards
    assert jaxpr.count("jaxmodels_cpu_attention_bwd") == 1
    np.testing.assert_allclose(jax.grad(f)(q), jax.grad(block)(q), rtol=1e-5, atol=1e-5)
