"""RWKV-7 WKV state update in Pallas interpret mode against models/rwkv7.py's step-by-step
scan (and its chunked closed form): y, the last state, and gradients of r, w, k, v, α, β
and S0. Ragged T (T=11 with chunks of 4). Tolerance 1e-5 relative to each tensor's scale
(all f32: the model computes the recurrence in f32 whatever its compute dtype)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmodels.kernels.rwkv7 import wkv7_pallas, wkv7_xla


def inputs(B=1, H=2, T=11, N=8, seed=0):
    k = jax.random.split(jax.random.key(seed), 9)
    kk = jax.random.normal(k[0], (B, H, T, N))
    kk = kk / jnp.linalg.norm(kk, axis=-1, keepdims=True)
    a = jax.nn.sigmoid(jax.random.normal(k[1], (B, H, T, N)))
    return (jax.random.normal(k[2], (B, H, T, N)),                               # r
            jnp.exp(-jnp.exp(jax.random.normal(k[3], (B, H, T, N)) - 1.0) - 0.1),  # w in (0, 1)
            jax.random.normal(k[4], (B, H, T, N)), jax.random.normal(k[5], (B, H, T, N)),
            -kk, kk * a, jax.random.normal(k[6], (B, H, N, N))), (
            jax.random.normal(k[7], (B, H, T, N)), jax.random.normal(k[8], (B, H, N, N)))


@pytest.mark.parametrize("reference", ["recurrent", "chunked"])
def test_wkv7_matches_reference(reference):
    args, (gy, gS) = inputs()

    def run(f):
        def loss(*a):
            y, S = f(*a)
            return jnp.sum(y * gy) + jnp.sum(S * gS)
        return jax.jit(f)(*args), jax.jit(jax.grad(loss, argnums=tuple(range(7))))(*args)
    (y, S), grads = run(lambda *a: wkv7_pallas(*a, chunk=4, interpret=True))
    (y_ref, S_ref), ref_grads = run(lambda *a: wkv7_xla(*a, chunk=4, recurrent=reference == "recurrent"))
    tol = 1e-5 if reference == "recurrent" else 1e-4  # the closed form solves a triangular system
    for got, want in [(y, y_ref), (S, S_ref), *zip(grads, ref_grads)]:
        scale = max(1.0, float(jnp.max(jnp.abs(want))))
        np.testing.assert_allclose(got, want, atol=tol * scale)


@pytest.mark.slow  # ~70 s on 2 busy cores (the interpreted kernel inside a 2-layer model)
def test_rwkv7_model_with_pallas_wkv_matches_default():
    """kernels.rwkv7=pallas: a tiny RWKV-7 gives the same logits and gradients."""
    from jaxmodels.config import load_config
    from jaxmodels.kernels import dispatch
    from jaxmodels.models import build_model

    model = build_model(load_config("configs/rwkv7_l12_d768.py:smoke").model)
    tokens = jax.random.randint(jax.random.key(0), (1, 9), 0, 256)
    params = model.init(jax.random.key(1), tokens)["params"]
    rng = np.random.default_rng(0)  # move zero-initialised leaves so every path matters
    params = jax.tree.map(lambda p: p + 0.05 * rng.standard_normal(p.shape).astype(np.float32), params)

    def run():
        f = lambda p: model.apply({"params": p}, tokens)
        return jax.jit(f)(params), jax.jit(jax.grad(lambda p: jnp.sum(f(p) ** 2)))(params)
    want, want_g = run()
    dispatch.configure({"rwkv7": "pallas"})
    try:
        got, got_g = run()
    finally:
        dispatch.configure(None)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)
    for a, b in zip(jax.tree.leaves(got_g), jax.tree.leaves(want_g)):
        np.testing.assert_allclose(a, b, atol=1e-4 * max(1.0, float(np.abs(b).max())))
