"""Mamba selective scan in Pallas interpret mode against the reference (jaxmodels.scan's
fused_scan, as models/mamba.py runs it): outputs y and the last state, and gradients of x,
dt, A, B, C and h0. Ragged T (T=13 with chunks of 4) and two channel blocks. Tolerance
1e-5 relative to each gradient's scale (f32 state; bf16 inputs are cast to f32 by both)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmodels.kernels.selective_scan import selective_scan_pallas, selective_scan_xla


@pytest.mark.parametrize("dtype", [jnp.float32, pytest.param(jnp.bfloat16, marks=pytest.mark.slow)])  # bf16: -m slow
def test_selective_scan_matches_reference(dtype):
    Bsz, T, E, N = 2, 13, 8, 4
    k = jax.random.split(jax.random.key(0), 8)
    x = jax.random.normal(k[0], (Bsz, T, E)).astype(dtype)
    dt = jax.nn.softplus(jax.random.normal(k[1], (Bsz, T, E)) - 1.0)
    A = -jnp.exp(0.5 * jax.random.normal(k[2], (E, N)))
    Bm = jax.random.normal(k[3], (Bsz, T, N)).astype(dtype)
    C = jax.random.normal(k[4], (Bsz, T, N)).astype(dtype)
    h0 = jax.random.normal(k[5], (Bsz, E, N))
    gy, gh = jax.random.normal(k[6], (Bsz, T, E)), jax.random.normal(k[7], (Bsz, E, N))

    def run(f):
        def loss(*args):
            y, h = f(*args)
            return jnp.sum(y * gy) + jnp.sum(h * gh)
        out = jax.jit(f)(x, dt, A, Bm, C, h0)
        return out, jax.jit(jax.grad(loss, argnums=tuple(range(6))))(x, dt, A, Bm, C, h0)
    (y, h), grads = run(lambda *a: selective_scan_pallas(*a, chunk=4, block_e=4, interpret=True))
    (y_ref, h_ref), ref_grads = run(selective_scan_xla)
    np.testing.assert_allclose(y, y_ref, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(h, h_ref, atol=1e-5, rtol=1e-5)
    for got, want in zip(grads, ref_grads):
        assert got.dtype == want.dtype
        scale = max(1.0, float(jnp.max(jnp.abs(want.astype(jnp.float32)))))
        tol = 1e-5 if want.dtype == jnp.float32 else 1e-2
        np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want, np.float32), atol=tol * scale)


def test_mamba_with_pallas_scan_matches_default():
    """kernels.selective_scan=pallas: a tiny Mamba gives the same logits and gradients."""
    from jaxmodels.kernels import dispatch
    from jaxmodels.models import build_model

    model = build_model(dict(name="mamba", vocab_size=32, d_model=8, n_layer=1, d_state=4))
    tokens = jax.random.randint(jax.random.key(0), (1, 11), 0, 32)
    params = model.init(jax.random.key(1), tokens)["params"]

    def run():
        f = lambda p: model.apply({"params": p}, tokens)
        return jax.jit(f)(params), jax.jit(jax.grad(lambda p: jnp.sum(f(p) ** 2)))(params)
    want, want_g = run()
    dispatch.configure({"selective_scan": "pallas"})
    try:
        got, got_g = run()
    finally:
        dispatch.configure(None)
    np.testing.assert_allclose(got, want, atol=1e-5)
    for a, b in zip(jax.tree.leaves(got_g), jax.tree.leaves(want_g)):
        np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4)
