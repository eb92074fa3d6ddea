"""The C++ CPU LayerNorm / RMSNorm (jaxmodels/kernels/cpu_norm.py) against the jnp reference
(jaxmodels.kernels.norms.norm_xla): values and every gradient, with and without the affine
and DiT's adaLN modulate."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmodels.kernels import cpu_ffi, dispatch
from jaxmodels.kernels.cpu_norm import cpu_norm, supported
from jaxmodels.kernels.norms import norm_xla
from jaxmodels.layers.norms import LayerNorm, RMSNorm

pytestmark = pytest.mark.skipif(not cpu_ffi.available(), reason=f"C++ CPU kernels: {cpu_ffi.reason()}")


def _normal(seed, *shape, scale=1.0, shift=0.0):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape) * scale + shift, jnp.float32)


def _inputs(shape, affine, modulate):
    B, C = shape[0], shape[-1]
    x = _normal(0, *shape, scale=2.0, shift=0.5)  # a mean far from 0: the centring matters
    w = _normal(1, C) if affine else None
    b = _normal(2, C) if affine else None
    sh = _normal(3, B, C) if modulate else None
    sc = _normal(4, B, C, scale=0.3) if modulate else None
    return x, w, b, sh, sc


# C = 37 and 300: rows that are not a multiple of the kernel's 64 lanes; [2, 1100, 160] is past
# the size where the rows are split over threads (and spans several 64-row blocks per example).
@pytest.mark.parametrize("shape", [(2, 70, 37), (3, 5, 300), (2, 1100, 160)])
@pytest.mark.parametrize("kind", ["layer", "rms"])
@pytest.mark.parametrize("affine,modulate", [(True, False), (False, True), (True, True)])
def test_matches_the_reference_values_and_gradients(shape, kind, affine, modulate):
    x, w, b, sh, sc = _inputs(shape, affine, modulate)
    dy = _normal(5, *shape)

    def loss(fn):
        return jax.jit(jax.value_and_grad(
            lambda *a: jnp.sum(fn(a[0], a[1], a[2], kind=kind, eps=1e-5, shift_BC=a[3], scale_BC=a[4]) * dy),
            argnums=(0, 1, 2, 3, 4)))

    y = jax.jit(lambda *a: cpu_norm(a[0], a[1], a[2], kind=kind, eps=1e-5, shift_BC=a[3], scale_BC=a[4]))(
        x, w, b, sh, sc)
    np.testing.assert_allclose(y, norm_xla(x, w, b, kind=kind, eps=1e-5, shift_BC=sh, scale_BC=sc),
                               rtol=1e-5, atol=2e-5)
    (got, got_g), (want, want_g) = loss(cpu_norm)(x, w, b, sh, sc), loss(norm_xla)(x, w, b, sh, sc)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-3)
    for g, r in zip(got_g, want_g):
        if r is None:
            assert g is None
            continue
        # Column sums over up to 2200 rows: compare against the gradient's own scale.
        np.testing.assert_allclose(g, r, rtol=1e-4, atol=2e-5 * max(1.0, float(jnp.max(jnp.abs(r)))))


def test_same_bits_in_every_call():
    """Two separately compiled programs, same inputs: identical values and gradients, also
    on the threaded path (the column sums are added in block order)."""
    x, w, b, _, _ = _inputs((2, 1100, 160), True, False)
    f = lambda x, w, b: jax.grad(lambda x, w, b: jnp.sum(jnp.sin(cpu_norm(x, w, b))), (0, 1, 2))(x, w, b)
    first = jax.jit(f)(x, w, b)
    second = jax.jit(lambda x, w, b: f(x + 0.0, w * 1.0, b))(x, w, b)
    for a, c in zip(first, second):
        np.testing.assert_array_equal(a, c)


def test_norm_layers_take_it_on_a_cpu_and_keep_jnp_otherwise():
    """kernels.norm "auto" on a CPU is "cpu": f32 LayerNorm / RMSNorm run the custom call and
    give the jnp result; bf16 inputs keep the jnp ops; "xla" turns it off."""
    x = _normal(6, 2, 9, 48)
    assert dispatch.choice("norm") == "cpu"
    for layer in (LayerNorm(), RMSNorm(), LayerNorm(use_bias=False)):
        params = layer.init(jax.random.key(0), x)
        params = jax.tree.map(lambda p: p + _normal(7, *p.shape, scale=0.1), params)
        jaxpr = str(jax.make_jaxpr(lambda p, x: layer.apply(p, x))(params, x))
        assert "jaxmodels_cpu_norm_fwd" in jaxpr
        got = layer.apply(params, x)
        dispatch.configure({"norm": "xla"})
        assert "jaxmodels_cpu_norm" not in str(jax.make_jaxpr(lambda p, x: layer.apply(p, x))(params, x))
        np.testing.assert_allclose(got, layer.apply(params, x), rtol=1e-5, atol=1e-5)
        dispatch.configure(None)
    bf16 = x.astype(jnp.bfloat16)
    assert "jaxmodels_cpu_norm" not in str(jax.make_jaxpr(lambda p, x: LayerNorm().apply(p, x))(
        LayerNorm().init(jax.random.key(0), bf16), bf16))


def test_under_remat_the_gradient_is_unchanged():
    """Inside jax.checkpoint (the layer stacks' remat) the forward call is recomputed in the
    backward pass: same gradient as without remat."""
    x, w, b, _, _ = _inputs((3, 20, 64), True, False)
    f = lambda x, w, b: jnp.sum(jnp.tanh(cpu_norm(x, w, b)) ** 2)
    plain = jax.grad(f, (0, 1, 2))(x, w, b)
    remat = jax.grad(jax.checkpoint(f), (0, 1, 2))(x, w, b)
    for a, c in zip(plain, remat):
        np.testing.assert_allclose(a, c, rtol=1e-6, atol=1e-6)


def test_what_it_takes_and_a_clear_error_otherwise():
    x = _normal(8, 2, 4, 8)
    assert supported(x) and supported(x, shift_BC=x[:, 0], scale_BC=x[:, 0])
    assert not supported(x.astype(jnp.bfloat16)) and not supported(x, dtype=jnp.bfloat16)
    assert not supported(x, shift_BC=x[:, 0])  # shift without scale
    assert not supported(x.reshape(8, 8), shift_BC=x[:, 0], scale_BC=x[:, 0])  # modulate needs [B, T, C]
    with pytest.raises(ValueError, match="kind='group'; valid: layer, rms"):
        cpu_norm(x, kind="group")
    with pytest.raises(ValueError, match="cpu_norm takes f32"):
        cpu_norm(x.astype(jnp.bfloat16))
