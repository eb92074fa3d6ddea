"""NF4 dequantise-matmul in Pallas interpret mode against layers.quant.nf4_matmul: output
and the gradient of x (the NF4 weight is frozen). Ragged rows (M=37) and an input width
that is not a multiple of the 64-row tile (in=80). Tolerances: f32 1e-5 relative to the
output scale; bf16 2e-2."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmodels.kernels.nf4_matmul import nf4_matmul_pallas, nf4_matmul_xla
from jaxmodels.layers import quant


@pytest.mark.parametrize("dtype", [jnp.float32, pytest.param(jnp.bfloat16, marks=pytest.mark.slow)])  # bf16: -m slow
def test_nf4_matmul_matches_reference(dtype):
    shape = (80, 192)
    k = jax.random.split(jax.random.key(0), 3)
    q = quant.nf4_quantize(0.05 * jax.random.normal(k[0], shape))
    x = jax.random.normal(k[1], (37, shape[0]))
    g = jax.random.normal(k[2], (37, shape[1]))

    def run(f, **kw):
        y = jax.jit(lambda x: f(x, q, shape, dtype, **kw))(x)
        dx = jax.jit(jax.grad(lambda x: jnp.sum(f(x, q, shape, dtype, **kw).astype(jnp.float32) * g)))(x)
        return np.asarray(y, np.float32), np.asarray(dx, np.float32)
    y, dx = run(nf4_matmul_pallas, block_m=16, block_n=64, block_k=32, interpret=True)
    y_ref, dx_ref = run(nf4_matmul_xla)
    tol = 1e-5 if dtype == jnp.float32 else 2e-2
    np.testing.assert_allclose(y, y_ref, atol=tol * np.abs(y_ref).max())
    np.testing.assert_allclose(dx, dx_ref, atol=tol * np.abs(dx_ref).max())


def test_unsupported_shape_is_a_clear_error():
    q = quant.nf4_quantize(jnp.ones((8, 40)))
    with pytest.raises(ValueError, match="out % 64 == 0"):
        nf4_matmul_pallas(jnp.ones((2, 8)), q, (8, 40), interpret=True)
