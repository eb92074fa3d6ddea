"""jaxmodels.layers.mlp.gelu (the exact form written out) against float64 and JAX's own."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmodels.layers.mlp import gelu


@pytest.mark.parametrize("kind", ["exact", "tanh"])
def test_forward_is_jax_gelu_and_backward_matches_autodiff(kind):
    x = jnp.concatenate([jnp.linspace(-9.0, 9.0, 4001), jax.random.normal(jax.random.key(0), (4096,)) * 3])
    ref = lambda v: jax.nn.gelu(v, approximate=(kind == "tanh"))
    if kind == "tanh":
        np.testing.assert_array_equal(np.asarray(gelu(x, kind)), np.asarray(ref(x)))
    else:  # PyTorch's erf formula: float64's value to f32 rounding, JAX's erfc form to ~5e-7
        x64 = np.asarray(x, np.float64)
        want = 0.5 * x64 * (1.0 + np.vectorize(math.erf)(x64 / math.sqrt(2.0)))
        np.testing.assert_allclose(np.asarray(gelu(x, kind)), want, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(np.asarray(gelu(x, kind)), np.asarray(ref(x)), rtol=1e-6, atol=1e-6)
    atol = 1e-5 if kind == "tanh" else 5e-7  # tanh: JAX's own derivative on both sides
    g = jax.random.normal(jax.random.key(1), x.shape)
    ours = jax.vjp(lambda v: gelu(v, kind), x)[1](g)[0]
    theirs = jax.vjp(ref, x)[1](g)[0]
    np.testing.assert_allclose(np.asarray(ours), np.asarray(theirs), rtol=2e-6, atol=atol)
    # Under jit and second order (the VJP itself differentiates): a smooth function of x.
    h = jax.jit(jax.grad(lambda v: gelu(v, kind).sum()))(x)
    np.testing.assert_allclose(np.asarray(h), np.asarray(jax.grad(lambda v: ref(v).sum())(x)), rtol=2e-6, atol=atol)


def test_bf16_input_keeps_dtype():
    x = jnp.linspace(-4, 4, 64, dtype=jnp.bfloat16)
    out, vjp = jax.vjp(lambda v: gelu(v, "exact"), x)
    assert out.dtype == jnp.bfloat16 and vjp(jnp.ones_like(out))[0].dtype == jnp.bfloat16
