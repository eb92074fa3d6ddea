"""Pallas flash attention (interpret mode) against the einsum reference: output and the
gradients of q, k, v. Ragged lengths (T not a multiple of the 16-row blocks), GQA and MQA,
sliding window < T, soft-cap, non-causal. Tolerances: f32 2e-5 absolute (unit-normal
inputs; the online softmax sums in a different order); bf16 inputs 3e-2 absolute (both
sides round p to bf16 before p @ v, at different points of the sum)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmodels.kernels import dispatch
from jaxmodels.kernels.attention import attention_xla, flash_attention

CASES = [
    # B, T, H, K, D, causal, window, softcap, dtype
    (2, 37, 4, 2, 16, True, None, 0.0, jnp.float32),    # GQA 2:1, ragged T
    (1, 50, 4, 1, 16, True, 13, 0.0, jnp.float32),      # MQA, window < T
    (1, 40, 2, 2, 16, False, None, 5.0, jnp.float32),   # non-causal, soft-cap
    # all of it in bf16 (-m slow: the default run keeps one bf16 kernel check, cross-entropy's)
    pytest.param(2, 37, 4, 2, 16, True, 9, 3.0, jnp.bfloat16, marks=pytest.mark.slow),
]


def run(f, q, k, v, g, **kw):
    def loss(q, k, v):
        return jnp.sum(f(q, k, v, **kw).astype(jnp.float32) * g)
    out = jax.jit(lambda q, k, v: f(q, k, v, **kw))(q, k, v)
    return out, jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(q, k, v)


@pytest.mark.parametrize("B,T,H,K,D,causal,window,softcap,dtype", CASES)
def test_flash_matches_reference(B, T, H, K, D, causal, window, softcap, dtype):
    keys = jax.random.split(jax.random.key(T + H), 4)
    q = jax.random.normal(keys[0], (B, T, H, D), dtype)
    k = jax.random.normal(keys[1], (B, T, K, D), dtype)
    v = jax.random.normal(keys[2], (B, T, K, D), dtype)
    g = jax.random.normal(keys[3], (B, T, H, D))
    kw = dict(causal=causal, window=window, softcap=softcap)
    out, grads = run(flash_attention, q, k, v, g, block_q=16, block_k=16, interpret=True, **kw)
    ref_out, ref_grads = run(attention_xla, q, k, v, g, **kw)
    tol = 2e-5 if dtype == jnp.float32 else 3e-2
    f32 = lambda x: np.asarray(x.astype(jnp.float32))
    np.testing.assert_allclose(f32(out), f32(ref_out), atol=tol)
    for got, want in zip(grads, ref_grads):
        assert got.dtype == want.dtype
        np.testing.assert_allclose(f32(got), f32(want), atol=tol * max(1.0, float(jnp.max(jnp.abs(f32(want))))))


def test_layers_attention_dispatches_to_flash():
    """kernels.attention=pallas: layers.attention.attention runs the kernel (same result)."""
    from jaxmodels.layers.attention import attention

    keys = jax.random.split(jax.random.key(1), 3)
    q, k, v = (jax.random.normal(kk, (1, 20, 2, 16)) for kk in keys)
    want = attention(q, k, v, causal=True)
    dispatch.configure({"attention": "pallas"})
    try:
        jaxpr = str(jax.make_jaxpr(lambda q, k, v: attention(q, k, v, causal=True))(q, k, v))
        got = attention(q, k, v, causal=True)
    finally:
        dispatch.configure(None)
    assert "flash_attention_fwd" in jaxpr
    np.testing.assert_allclose(got, want, atol=2e-5)
