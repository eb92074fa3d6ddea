"""layers/dense.py (flattened matmuls) and layers/dropout.py (hash-mask dropout)."""
import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmodels.layers.dense import Dense, flat_dot_general, linear, project_out
from jaxmodels.layers.dropout import Dropout, dropout, keep_mask


def test_dense_matches_flax_dense_params_outputs_and_grads():
    x = jax.random.normal(jax.random.key(0), (3, 5, 7, 8))
    ours, ref = Dense(6, name="d"), nn.Dense(6, name="d")
    params = ours.init(jax.random.key(1), x)
    chex.assert_trees_all_equal_shapes(params, ref.init(jax.random.key(1), x))
    chex.assert_trees_all_close(params, ref.init(jax.random.key(1), x))

    def loss(module, p, x):
        return jnp.sum(jnp.sin(module.apply(p, x)))
    np.testing.assert_allclose(ours.apply(params, x), ref.apply(params, x), rtol=1e-6, atol=1e-6)
    g_ours = jax.grad(lambda p, x: loss(ours, p, x), argnums=(0, 1))(params, x)
    g_ref = jax.grad(lambda p, x: loss(ref, p, x), argnums=(0, 1))(params, x)
    chex.assert_trees_all_close(g_ours, g_ref, rtol=1e-5, atol=1e-5)


def test_flat_dot_general_falls_back_for_other_dimension_numbers():
    a = jax.random.normal(jax.random.key(0), (2, 3, 4))
    b = jax.random.normal(jax.random.key(1), (2, 4, 5))
    dims = (((2,), (1,)), ((0,), (0,)))  # batched: not flattened
    np.testing.assert_allclose(flat_dot_general(a, b, dims), jax.lax.dot_general(a, b, dims), rtol=1e-6)
    w = jax.random.normal(jax.random.key(2), (4, 5))
    np.testing.assert_allclose(linear(a, w), jnp.einsum("bti,io->bto", a, w), rtol=1e-5, atol=1e-6)
    table = jax.random.normal(jax.random.key(3), (9, 4))
    out = project_out(a, table)
    chex.assert_shape(out, (2, 3, 9))
    np.testing.assert_allclose(out, jnp.einsum("bti,vi->btv", a, table), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("keep", [0.9, 0.8, 0.5])
def test_keep_mask_rate_and_independence(keep):
    shape = (64, 6, 32, 32)
    m = np.asarray(keep_mask(jax.random.key(0), shape, keep))
    n = m.size
    tol = 4 * np.sqrt(keep * (1 - keep) / n)  # 4 sigma
    assert abs(m.mean() - keep) < tol
    # Neighbours along every axis and a second key agree as often as independent draws would.
    expect = keep ** 2 + (1 - keep) ** 2
    for axis in range(m.ndim):
        a, b = np.take(m, range(0, m.shape[axis] - 1), axis), np.take(m, range(1, m.shape[axis]), axis)
        assert abs((a == b).mean() - expect) < 4 * np.sqrt(expect * (1 - expect) / a.size) + 1e-4
    other = np.asarray(keep_mask(jax.random.key(1), shape, keep))
    assert abs((m == other).mean() - expect) < 4 * np.sqrt(expect * (1 - expect) / n)
    np.testing.assert_array_equal(m, np.asarray(keep_mask(jax.random.key(0), shape, keep)))


def test_dropout_scales_kept_values_and_module_matches_function():
    x = jnp.ones((16, 128))
    y = dropout(x, 0.25, jax.random.key(3))
    kept = np.asarray(y) != 0
    np.testing.assert_allclose(np.asarray(y)[kept], 1 / 0.75, rtol=1e-6)
    assert abs(kept.mean() - 0.75) < 0.03
    mod = Dropout(0.25)
    np.testing.assert_array_equal(mod.apply({}, x, deterministic=True), x)
    out = mod.apply({}, x, deterministic=False, rngs={"dropout": jax.random.key(5)})
    assert 0 < float((out == 0).mean()) < 0.5
    np.testing.assert_array_equal(dropout(x, 0.0, jax.random.key(0)), x)
    np.testing.assert_array_equal(dropout(x, 1.0, jax.random.key(0)), jnp.zeros_like(x))
    with pytest.raises(ValueError, match="keep_prob"):
        keep_mask(jax.random.key(0), (2,), 1.5)
