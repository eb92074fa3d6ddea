"""Noise schedules, closed-form conversions and the training losses."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmodels.diffusion import losses
from jaxmodels.diffusion import schedules as S
from jaxmodels.layers.embeddings import sincos_1d, sincos_2d, timestep_embedding


@pytest.fixture(scope="module", params=["linear", "cosine"])
def sched(request):
    return S.make_schedule(request.param, 1000)


def _data(n=4, shape=(8, 8, 3), seed=0):
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    x0 = jax.random.uniform(k1, (n,) + shape, minval=-1.0, maxval=1.0)
    noise = jax.random.normal(k2, (n,) + shape)
    t = jnp.array([0, 1, 500, 999])[:n]
    return x0, noise, t


def test_linear_and_cosine_betas():
    lin = S.make_schedule("linear", 1000)
    np.testing.assert_allclose(lin.betas[0], 1e-4, rtol=1e-6)
    np.testing.assert_allclose(lin.betas[-1], 0.02, rtol=1e-6)
    cos = S.make_schedule("cosine", 1000)
    assert float(cos.betas.max()) <= 0.999 + 1e-6
    assert float(cos.betas[-1]) == pytest.approx(0.999)
    for s in (lin, cos):
        assert s.num_timesteps == 1000 and s.betas.shape == (1000,) and s.betas.dtype == jnp.float32
        assert np.all(np.diff(np.asarray(s.alphas_cumprod)) < 0)
    # Cosine: abar(t) follows cos^2((t/T + s)/(1 + s) pi/2) / abar(0) (until beta hits its cap).
    f = lambda u: math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    np.testing.assert_allclose(cos.alphas_cumprod[499], f(500 / 1000) / f(0), rtol=1e-5)
    with pytest.raises(ValueError, match="linear, cosine"):
        S.make_schedule("quadratic")


def test_posterior_constants(sched):
    # Recomputed here in float64 (1 - abar cancels badly in f32 near t=0).
    b = S.linear_betas(1000) if float(sched.betas[-1]) == pytest.approx(0.02) else S.cosine_betas(1000)
    np.testing.assert_allclose(sched.betas, b, rtol=1e-6)
    ab = np.cumprod(1 - b)
    abp = np.append(1.0, ab[:-1])
    np.testing.assert_allclose(sched.alphas_cumprod, ab, rtol=1e-5)
    np.testing.assert_allclose(sched.posterior_variance, b * (1 - abp) / (1 - ab), rtol=1e-5, atol=1e-12)
    # The clipped log-variance replaces beta~_0 = 0 by beta~_1.
    assert float(sched.posterior_variance[0]) == 0.0
    np.testing.assert_allclose(sched.posterior_log_variance_clipped[0], np.log(sched.posterior_variance[1]), rtol=1e-5)
    np.testing.assert_allclose(sched.posterior_mean_coef1, b * np.sqrt(abp) / (1 - ab), rtol=1e-5)
    np.testing.assert_allclose(sched.posterior_mean_coef2, (1 - abp) * np.sqrt(1 - b) / (1 - ab), rtol=1e-5)


def test_noising_then_inverting_with_true_eps_is_exact(sched):
    x0, noise, t = _data()
    x_t = S.q_sample(sched, x0, t, noise)
    # Exact up to f32 rounding of x_t, amplified by 1/sqrt(abar) (2e4 at cosine's t=999)
    # when recovering x0, and by 1/sqrt(1-abar) (100 at t=0) when recovering eps.
    for i in range(len(t)):
        x0_tol = 1e-6 * float(sched.sqrt_recip_alphas_cumprod[t[i]]) + 1e-6
        eps_tol = 1e-6 / float(sched.sqrt_one_minus_alphas_cumprod[t[i]]) + 1e-6
        np.testing.assert_allclose(S.predict_x0_from_eps(sched, x_t, t, noise)[i], x0[i], atol=x0_tol)
        np.testing.assert_allclose(S.predict_eps_from_x0(sched, x_t, t, x0)[i], noise[i], atol=eps_tol)
    # At t=0 almost no noise: x_t ~ x0.
    np.testing.assert_allclose(x_t[0], x0[0], atol=0.05)


def test_v_conversions_are_inverses(sched):
    x0, noise, t = _data()
    x_t = S.q_sample(sched, x0, t, noise)
    v = S.v_from(sched, x0, noise, t)
    np.testing.assert_allclose(S.x0_from_v(sched, x_t, v, t), x0, atol=1e-5)
    np.testing.assert_allclose(S.eps_from_v(sched, x_t, v, t), noise, atol=1e-5)
    snr = S.snr(sched, t)
    ab = sched.alphas_cumprod[t]
    np.testing.assert_allclose(snr, ab / (1 - ab), rtol=1e-6)
    assert np.all(np.diff(np.asarray(snr)) < 0)


def test_embeddings():
    emb = timestep_embedding(jnp.array([0.0, 3.0]), 8)
    np.testing.assert_allclose(emb[0], [1, 1, 1, 1, 0, 0, 0, 0])  # cos half, then sin half
    freqs = 10000.0 ** (-np.arange(4) / 4)
    np.testing.assert_allclose(emb[1], np.concatenate([np.cos(3 * freqs), np.sin(3 * freqs)]), rtol=1e-5)
    assert timestep_embedding(jnp.array([1.0]), 7).shape == (1, 7)
    table = sincos_2d(3, 4, 16)
    assert table.shape == (12, 16)
    # Token (row 2, col 1) = index 2*4+1: first half encodes the column, second the row.
    np.testing.assert_allclose(table[9], np.concatenate([sincos_1d([1], 8)[0], sincos_1d([2], 8)[0]]))
    np.testing.assert_allclose(sincos_1d([0], 4)[0], [0, 0, 1, 1])


def test_simple_losses_at_the_target_are_zero(sched):
    x0, noise, t = _data()
    x_t = S.q_sample(sched, x0, t, noise)
    for pred, target in (("eps", noise), ("v", S.v_from(sched, x0, noise, t)), ("x0", x0)):
        loss = losses.diffusion_loss(target, x0, x_t, t, noise, sched, prediction=pred)
        assert loss.shape == (4,)
        np.testing.assert_allclose(loss, 0.0, atol=1e-10)
    out = noise + 0.5
    np.testing.assert_allclose(losses.diffusion_loss(out, x0, x_t, t, noise, sched), 0.25, rtol=1e-6)
    # Min-SNR-gamma weights min(snr, g) / snr for eps: 1 where snr <= gamma.
    w = losses.diffusion_loss(out, x0, x_t, t, noise, sched, min_snr_gamma=5.0) / 0.25
    snr = np.asarray(S.snr(sched, t))
    np.testing.assert_allclose(w, np.minimum(snr, 5.0) / snr, rtol=1e-5)


def test_hybrid_loss(sched):
    x0, noise, t = _data()
    x0 = jnp.round(x0 * 127.5) / 127.5  # 8-bit data, as the decoder NLL assumes
    x_t = S.q_sample(sched, x0, t, noise)
    var_v = jax.random.uniform(jax.random.key(3), x0.shape, minval=-1, maxval=1)
    out = jnp.concatenate([noise + 0.1 * jax.random.normal(jax.random.key(4), x0.shape), var_v], -1)
    loss, terms = losses.diffusion_loss(out, x0, x_t, t, noise, sched, learn_sigma=True, return_terms=True)
    assert np.all(np.isfinite(loss)) and np.all(np.asarray(terms["vb"]) >= 0)
    np.testing.assert_allclose(loss, terms["mse"] + terms["vb"], rtol=1e-6)
    # With the true eps and v = -1 (model variance = posterior variance) the KL terms vanish.
    perfect = jnp.concatenate([noise, -jnp.ones_like(noise)], -1)
    _, terms = losses.diffusion_loss(perfect, x0, x_t, t, noise, sched, learn_sigma=True, return_terms=True)
    np.testing.assert_allclose(terms["vb"][1:], 0.0, atol=1e-3)
    assert float(terms["vb"][0]) > 0  # the t=0 decoder NLL of a discretised Gaussian

    # The VLB trains only the variance: its gradient w.r.t. the mean channels is zero.
    def vb_sum(o):
        return losses.diffusion_loss(o, x0, x_t, t, noise, sched, learn_sigma=True, return_terms=True)[1]["vb"].sum()
    g = jax.grad(vb_sum)(out)
    assert float(jnp.abs(g[..., :3]).max()) == 0.0 and float(jnp.abs(g[..., 3:]).max()) > 0
    with pytest.raises(ValueError, match="6 output channels"):
        losses.diffusion_loss(noise, x0, x_t, t, noise, sched, learn_sigma=True)
