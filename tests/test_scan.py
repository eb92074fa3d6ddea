"""jaxmodels.scan: every mode equals a plain loop and sequential (values, final state, grads)."""
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmodels import scan

MODES = ("sequential", "associative", "chunked")


def _loop_reference(a, b, h0):
    h, hs = np.asarray(h0, np.float64), []
    for t in range(a.shape[1]):
        h = a[:, t] * h + b[:, t]
        hs.append(h)
    return np.stack(hs, 1), h


def _inputs(T=13, S=(3, 2), seed=0):
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    a = jax.random.uniform(k1, (2, T) + S, minval=0.5, maxval=1.0)
    b = jax.random.normal(k2, (2, T) + S)
    h0 = jax.random.normal(k3, (2,) + S)
    return a, b, h0


@pytest.mark.parametrize("mode,chunk", [("sequential", 4), ("associative", 4), ("chunked", 4),
                                        ("chunked", 64)])  # 13 % 4 != 0: a padded last chunk
def test_linear_scan_matches_loop(mode, chunk):
    a, b, h0 = _inputs()
    h_all, h_last = jax.jit(functools.partial(scan.linear_scan, mode=mode, chunk=chunk))(a, b, h0)
    ref_all, ref_last = _loop_reference(np.asarray(a), np.asarray(b), np.asarray(h0))
    chex.assert_shape(h_all, a.shape)
    chex.assert_shape(h_last, h0.shape)
    np.testing.assert_allclose(h_all, ref_all, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(h_last, ref_last, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode", ["associative", "chunked"])
def test_linear_scan_gradients_match_sequential(mode):
    a, b, h0 = _inputs(T=11)
    w = jax.random.normal(jax.random.key(5), a.shape)

    def loss(a, b, h0, mode):
        h_all, h_last = scan.linear_scan(a, b, h0, mode=mode, chunk=4)
        return jnp.sum(h_all * w) + jnp.sum(h_last ** 2)

    grad_fn = jax.jit(jax.grad(loss, argnums=(0, 1, 2)), static_argnums=3)
    g_ref = grad_fn(a, b, h0, "sequential")
    g = grad_fn(a, b, h0, mode)
    for x, y in zip(g, g_ref):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5)


def test_step_continues_a_scan_and_bf16_inputs_compute_in_f32():
    a, b, h0 = _inputs(T=6)
    h_all, _ = jax.jit(functools.partial(scan.linear_scan, mode="sequential"))(
        a.astype(jnp.bfloat16), b.astype(jnp.bfloat16), h0)
    assert h_all.dtype == jnp.float32
    h = h0
    step = jax.jit(scan.step)
    for t in range(6):
        h = step(a[:, t].astype(jnp.bfloat16), b[:, t].astype(jnp.bfloat16), h)
    np.testing.assert_allclose(h, h_all[:, -1], rtol=1e-6)


@pytest.mark.parametrize("mode", MODES)
def test_fused_scan_readout(mode):
    """Mamba-style: a, b built per chunk from small inputs, the state read out with C."""
    B, T, E, N = 2, 10, 3, 4
    ks = jax.random.split(jax.random.key(1), 4)
    dt = jax.nn.softplus(jax.random.normal(ks[0], (B, T, E)))
    A = -jnp.arange(1, N + 1, dtype=jnp.float32)[None].repeat(E, 0)
    Bm, Cm = jax.random.normal(ks[1], (B, T, N)), jax.random.normal(ks[2], (B, T, N))
    x = jax.random.normal(ks[3], (B, T, E))

    def make_ab(xs):
        dt, Bm, _, x = xs
        return jnp.exp(dt[..., None] * A), dt[..., None] * Bm[:, :, None] * x[..., None]

    def readout(h, xs):
        return jnp.einsum("bten,btn->bte", h, xs[2])

    h0 = jnp.zeros((B, E, N))
    y, h_last = jax.jit(lambda xs, h0: scan.fused_scan(make_ab, readout, xs, h0, mode=mode, chunk=3))(
        (dt, Bm, Cm, x), h0)
    a, b = make_ab((dt, Bm, Cm, x))
    h_all, ref_last = jax.jit(functools.partial(scan.linear_scan, mode="sequential"))(a, b, h0)
    np.testing.assert_allclose(y, readout(h_all, (dt, Bm, Cm, x)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(h_last, ref_last, rtol=1e-5, atol=1e-6)


def test_resolve_mode():
    assert scan.resolve_mode("auto") == ("sequential" if jax.default_backend() == "cpu" else "chunked")
    with pytest.raises(ValueError, match="valid"):
        scan.resolve_mode("parallel")


def _wkv_reference(w, u, k, v, state):
    """HF rwkv_linear_attention_cpu in float64 numpy (w already = -exp(time_decay))."""
    num, den, mx = (np.asarray(s, np.float64) for s in state)
    out = np.zeros(k.shape)
    for t in range(k.shape[1]):
        kt, vt = k[:, t], v[:, t]
        q = np.maximum(mx, kt + u)
        e1, e2 = np.exp(mx - q), np.exp(kt + u - q)
        out[:, t] = (e1 * num + e2 * vt) / (e1 * den + e2)
        q = np.maximum(mx + w, kt)
        e1, e2 = np.exp(mx + w - q), np.exp(kt - q)
        num, den, mx = e1 * num + e2 * vt, e1 * den + e2, q
    return out, (num, den, mx)


def _wkv_inputs(T=13, C=5, seed=2):
    ks = jax.random.split(jax.random.key(seed), 4)
    w = -jnp.exp(jax.random.normal(ks[0], (C,)))
    u = jax.random.normal(ks[1], (C,))
    # Keys up to ~100: exp(k) alone would overflow f32, the running-max form must not.
    k = 40.0 * jax.random.normal(ks[2], (2, T, C))
    v = jax.random.normal(ks[3], (2, T, C))
    return w, u, k, v


@pytest.mark.parametrize("mode", MODES)
def test_wkv_log_scan_matches_hf_loop_and_is_stable(mode):
    w, u, k, v = _wkv_inputs()
    out, state = jax.jit(functools.partial(scan.wkv_log_scan, mode=mode, chunk=4))(w, u, k, v)
    ref, ref_state = _wkv_reference(*(np.asarray(x, np.float64) for x in (w, u, k, v)),
                                    scan.wkv_init_state(2, 5))
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
    # (num, den) are only defined up to the common factor e^max: compare num·e^max. The max
    # is ~100 here, where one f32 ulp is 8e-6, so the rescaled state holds ~1e-5 relative.
    for s, r in zip(state[:2], ref_state[:2]):
        np.testing.assert_allclose(np.asarray(s) * np.exp(np.asarray(state[2]) - ref_state[2]), r,
                                   rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("mode", ["sequential", "chunked"])
def test_wkv_log_scan_state_continues(mode):
    w, u, k, v = _wkv_inputs(T=12)
    wkv = jax.jit(functools.partial(scan.wkv_log_scan, mode=mode, chunk=4))
    full, s_full = wkv(w, u, k, v)
    first, s = wkv(w, u, k[:, :7], v[:, :7])
    second, s2 = wkv(w, u, k[:, 7:], v[:, 7:], s)
    np.testing.assert_allclose(jnp.concatenate([first, second], 1), full, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(s2[0] / s2[1], s_full[0] / s_full[1], rtol=1e-5)


@pytest.mark.parametrize("mode", ["associative", "chunked"])
def test_wkv_log_scan_gradients_match_sequential(mode):
    w, u, k, v = _wkv_inputs(T=10)
    k = k / 20.0
    g_out = jax.random.normal(jax.random.key(9), k.shape)

    def loss(w, u, k, v, mode):
        return jnp.sum(scan.wkv_log_scan(w, u, k, v, mode=mode, chunk=4)[0] * g_out)

    grad_fn = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3)), static_argnums=4)
    g_ref = grad_fn(w, u, k, v, "sequential")
    g = grad_fn(w, u, k, v, mode)
    for x, y in zip(g, g_ref):
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5)
