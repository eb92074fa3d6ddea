"""Fused LayerNorm / RMSNorm (+ DiT adaLN modulate) in Pallas interpret mode against the
jnp reference: output and gradients of x, weight, bias, shift, scale. Ragged rows (T=13
with 8-row blocks) and a channel count that is not a power of two (C=24, padded to 32).
Tolerances: f32 1e-5 (absolute, relative to the largest gradient); bf16 activations 2e-2."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmodels.kernels.norms import norm_pallas, norm_xla


def grads_of(f, x, w, b, sh, sc, g, **kw):
    def loss(x, w, b, sh, sc):
        return jnp.sum(f(x, w, b, shift_BC=sh, scale_BC=sc, **kw).astype(jnp.float32) * g)
    out = f(x, w, b, shift_BC=sh, scale_BC=sc, **kw)
    return out, jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3, 4)))(x, w, b, sh, sc)


@pytest.mark.parametrize("kind,modulate,dtype", [
    ("layer", False, jnp.float32), ("rms", False, jnp.float32), ("layer", True, jnp.float32),
    pytest.param("rms", True, jnp.bfloat16, marks=pytest.mark.slow)])  # bf16: -m slow
def test_fused_norm_matches_reference(kind, modulate, dtype):
    keys = jax.random.split(jax.random.key(3), 6)
    B, T, C = 2, 13, 24
    x = (3.0 + 2.0 * jax.random.normal(keys[0], (B, T, C))).astype(dtype)
    w = 1.0 + 0.1 * jax.random.normal(keys[1], (C,))
    b = 0.1 * jax.random.normal(keys[2], (C,))
    sh = 0.5 * jax.random.normal(keys[3], (B, C)) if modulate else None
    sc = 0.5 * jax.random.normal(keys[4], (B, C)) if modulate else None
    g = jax.random.normal(keys[5], (B, T, C))
    kw = dict(kind=kind, eps=1e-5)
    if not modulate:  # the plain norm takes no per-example inputs
        f_p = lambda x, w, b, shift_BC, scale_BC, **k: norm_pallas(x, w, b, block_rows=8, interpret=True, **k)
        f_x = lambda x, w, b, shift_BC, scale_BC, **k: norm_xla(x, w, b, **k)
        sh = sc = jnp.zeros(())
    else:
        f_p = lambda *a, **k: norm_pallas(*a, block_rows=8, interpret=True, **k)
        f_x = norm_xla
    out, grads = grads_of(f_p, x, w, b, sh, sc, g, **kw)
    ref, ref_grads = grads_of(f_x, x, w, b, sh, sc, g, **kw)
    tol = 1e-5 if dtype == jnp.float32 else 2e-2
    assert out.dtype == ref.dtype
    np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(ref, np.float32), atol=tol * 4)
    for got, want in zip(grads, ref_grads):
        scale = max(1.0, float(jnp.max(jnp.abs(want.astype(jnp.float32)))))
        np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want, np.float32), atol=tol * scale)


def test_reference_is_layers_norms():
    """norm_xla is what layers/norms.py computes (so the dispatch changes nothing)."""
    from jaxmodels.layers.norms import LayerNorm, RMSNorm

    x = jax.random.normal(jax.random.key(0), (3, 5, 16))
    for mod, kind in ((LayerNorm(eps=1e-5), "layer"), (RMSNorm(eps=1e-6), "rms")):
        params = mod.init(jax.random.key(1), x)["params"]
        params = jax.tree.map(lambda p: p + 0.3, params)
        want = mod.apply({"params": params}, x)
        got = norm_xla(x, params["scale"], params.get("bias"), kind=kind, eps=mod.eps)
        np.testing.assert_allclose(got, want, atol=1e-6)


def test_dit_with_fused_norm_matches_default():
    """kernels.norm=pallas: a tiny DiT (adaLN modulate fused into its LayerNorms) gives the
    same prediction and parameter gradients as the default path."""
    from jaxmodels.kernels import dispatch
    from jaxmodels.models import build_model

    model = build_model(dict(name="dit", size="dit-s/2", hidden_size=32, depth=1, num_heads=2,
                             num_classes=10, in_channels=3, patch_size=4))
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
    t, cond = jnp.array([3, 700]), {"label": jnp.array([1, 9])}
    params = model.init(jax.random.key(0), x, t, cond)["params"]
    rng = np.random.default_rng(1)  # non-zero adaLN / final layers, so the paths matter
    params = jax.tree.map(lambda p: p + 0.05 * rng.standard_normal(p.shape).astype(np.float32), params)

    def out_and_grads():
        f = lambda p: model.apply({"params": p}, x, t, cond)
        return jax.jit(f)(params), jax.jit(jax.grad(lambda p: jnp.sum(f(p) ** 2)))(params)
    want, want_g = out_and_grads()
    dispatch.configure({"norm": "pallas"})
    try:
        got, got_g = out_and_grads()
    finally:
        dispatch.configure(None)
    np.testing.assert_allclose(got, want, atol=1e-5)
    for a, b in zip(jax.tree.leaves(got_g), jax.tree.leaves(want_g)):
        np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4)
