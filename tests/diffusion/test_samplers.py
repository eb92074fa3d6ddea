"""Samplers (DDPM / DDIM / DPM-Solver++(2M)) with oracle denoisers, and classifier-free guidance."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmodels.diffusion import samplers
from jaxmodels.diffusion import schedules as S
from jaxmodels.models import dit

SHAPE = (3, 4, 4, 2)


@pytest.fixture(scope="module")
def sched():
    return S.make_schedule("linear", 1000)


@pytest.fixture(scope="module")
def x0_star():
    return jax.random.uniform(jax.random.key(7), SHAPE, minval=-0.9, maxval=0.9)


def _oracle(sched, x0, x_t, t_N, prediction="eps", learn_sigma=False):
    """The ideal denoiser for a data distribution concentrated on x0: the true noise of x_t."""
    sa = S.extract(sched.sqrt_alphas_cumprod, t_N, x_t)
    s1a = S.extract(sched.sqrt_one_minus_alphas_cumprod, t_N, x_t)
    eps = (x_t - sa * x0) / s1a
    out = S.v_from(sched, x0, eps, t_N) if prediction == "v" else eps
    if learn_sigma:
        out = jnp.concatenate([out, -jnp.ones_like(out)], -1)  # v = -1: posterior variance
    return out


def oracle_fn(sched, x0, **kw):
    return jax.tree_util.Partial(lambda s, x0, x_t, t: _oracle(s, x0, x_t, t, **kw), sched, x0)


@pytest.mark.parametrize("sampler,steps,prediction", [
    ("ddim", 10, "eps"), ("ddim", 10, "v"), ("dpmpp_2m", 10, "eps"), ("dpmpp_2m", 7, "v"),
    ("ddpm", 25, "eps")])
def test_oracle_denoiser_reconstructs_x0(sched, x0_star, sampler, steps, prediction):
    x = samplers.sample(oracle_fn(sched, x0_star, prediction=prediction), SHAPE, jax.random.key(0), sched,
                        sampler=sampler, steps=steps, prediction=prediction)
    assert x.shape == SHAPE and x.dtype == jnp.float32
    np.testing.assert_allclose(x, x0_star, atol=1e-4)


def test_ddpm_learned_variance_at_v_minus_one_equals_fixed_posterior(sched, x0_star):
    # A denoiser whose eps is off (so the ancestral noise matters) with v = -1 must sample
    # exactly like the fixed posterior-variance DDPM given the same rng.
    def off(s, x0, x_t, t):
        return _oracle(s, x0, x_t, t) * 0.9
    fixed = samplers.sample(jax.tree_util.Partial(off, sched, x0_star), SHAPE, jax.random.key(1), sched,
                            sampler="ddpm", steps=20)
    learned = samplers.sample(
        jax.tree_util.Partial(lambda s, x0, x_t, t: jnp.concatenate(
            [off(s, x0, x_t, t), -jnp.ones_like(x_t)], -1), sched, x0_star),
        SHAPE, jax.random.key(1), sched, sampler="ddpm", steps=20, learn_sigma=True)
    np.testing.assert_allclose(learned, fixed, atol=1e-5)
    other = samplers.sample(jax.tree_util.Partial(off, sched, x0_star), SHAPE, jax.random.key(2), sched,
                            sampler="ddpm", steps=20)
    assert float(jnp.abs(other - fixed).max()) > 1e-2  # ancestral sampling is stochastic


def test_ddim_eta0_is_deterministic(sched, x0_star):
    def imperfect(s, x0, x_t, t):  # not the oracle, so every intermediate state matters
        return jnp.tanh(x_t) * 0.5 + 0.1 * x0
    fn = jax.tree_util.Partial(imperfect, sched, x0_star)
    x_init = jax.random.normal(jax.random.key(3), SHAPE)
    a = samplers.sample(fn, SHAPE, jax.random.key(0), sched, steps=8, x_init=x_init)
    b = samplers.sample(fn, SHAPE, jax.random.key(99), sched, steps=8, x_init=x_init)
    np.testing.assert_array_equal(a, b)
    c = samplers.sample(fn, SHAPE, jax.random.key(0), sched, steps=8, eta=1.0, x_init=x_init)
    d = samplers.sample(fn, SHAPE, jax.random.key(99), sched, steps=8, eta=1.0, x_init=x_init)
    assert float(jnp.abs(c - d).max()) > 1e-2
    e = samplers.sample(fn, SHAPE, jax.random.key(5), sched, steps=8)
    np.testing.assert_array_equal(e, samplers.sample(fn, SHAPE, jax.random.key(5), sched, steps=8))


def test_spaced_timesteps(sched):
    np.testing.assert_array_equal(samplers.spaced_timesteps(1000, 5), [0, 250, 500, 749, 999])
    np.testing.assert_array_equal(samplers.spaced_timesteps(10, 10), np.arange(10))
    with pytest.raises(ValueError):
        samplers.spaced_timesteps(10, 11)
    abar = np.asarray(sched.alphas_cumprod, np.float64)
    ts = samplers.logsnr_timesteps(abar, 8)
    assert ts[0] == 0 and ts[-1] == 999 and np.all(np.diff(ts) > 0)
    lam = 0.5 * np.log(abar[ts] / (1 - abar[ts]))
    np.testing.assert_allclose(np.diff(lam), np.diff(lam).mean(), rtol=0.1)  # evenly spaced log-SNR
    np.testing.assert_array_equal(samplers.logsnr_timesteps(abar, 1000), np.arange(1000))
    assert samplers.sampling_timesteps(sched, 3, "time") == (0, 500, 999)


@pytest.fixture(scope="module")
def tiny_dit():
    model = dit.build(dict(size="dit-s/2", hidden_size=32, depth=2, num_heads=2, num_classes=5,
                           in_channels=2, learn_sigma=True))
    x = jnp.zeros((2,) + SHAPE[1:])

    params = jax.jit(lambda: model.init(jax.random.key(0, impl="rbg"), x, jnp.zeros((2,), jnp.int32),
                                        {"label": jnp.zeros((2,), jnp.int32)})["params"])()
    # Zero-init read-outs would make every output 0; perturb so guidance has something to act
    # on (numpy noise: a jitted PRNG draw per leaf is slow to compile).
    rng = np.random.default_rng(1)
    return model, jax.tree.map(lambda p: jnp.asarray(p + 0.05 * rng.standard_normal(p.shape).astype(np.float32)),
                               params)


def test_cfg(tiny_dit):
    model, params = tiny_dit
    x = jax.random.normal(jax.random.key(2), SHAPE)
    t = jnp.array([10, 500, 990])
    cond = {"label": jnp.array([0, 3, 4])}
    apply = jax.jit(lambda c, p=params: model.apply({"params": p}, x, t, c))
    cond_out = apply(cond)
    # Scale 1 is the conditional model, exactly (compiled the same way: params as arguments).
    scale1 = jax.jit(lambda p, c: samplers.cfg_denoise_fn(model.apply, p, c, 1.0)(x, t))(params, cond)
    np.testing.assert_array_equal(scale1, jax.jit(lambda p, c: model.apply({"params": p}, x, t, c))(params, cond))
    np.testing.assert_allclose(scale1, cond_out, atol=1e-6)
    # Otherwise uncond + s (cond - uncond) on eps, the learned variance from the conditional half.
    uncond_out = model.apply({"params": params}, x, t, {"label": cond["label"], "drop": jnp.ones((3,), bool)})
    np.testing.assert_allclose(uncond_out, apply({"label": jnp.full((3,), 5)}), atol=1e-6)  # null class
    guided = jax.jit(lambda x, t: samplers.cfg_denoise_fn(model.apply, params, cond, 4.0)(x, t))(x, t)
    C = SHAPE[-1]
    np.testing.assert_allclose(guided[..., :C], uncond_out[..., :C] + 4.0 * (cond_out[..., :C] - uncond_out[..., :C]),
                               atol=1e-5)
    np.testing.assert_allclose(guided[..., C:], cond_out[..., C:], atol=1e-6)
    assert float(jnp.abs(cond_out - uncond_out).max()) > 1e-3
    # End to end: guided DDPM with the learned variance. New params (same shapes) reuse the
    # compiled sampler: the denoiser is a Partial whose arrays are jit arguments.
    sizes = []
    for p in (params, jax.tree.map(lambda a: a * 1.01, params)):
        fn = samplers.cfg_denoise_fn(model.apply, p, cond, 2.0)
        out = samplers.sample(fn, SHAPE, jax.random.key(0), S.make_schedule("cosine", 100), sampler="ddpm",
                              steps=5, learn_sigma=True)
        assert out.shape == SHAPE and bool(jnp.all(jnp.isfinite(out))) and float(jnp.abs(out).max()) <= 1.0 + 1e-6
        cache_size = getattr(samplers._sample_jit, "_cache_size", None)  # a jax internal: check if present
        sizes.append(cache_size() if cache_size else 0)
    assert sizes[0] == sizes[1]


def test_second_order_solver_on_gaussian_data(sched):
    # Data x0 ~ N(m, s^2) per pixel: E[x0 | x_t] is known in closed form, and the
    # probability-flow ODE maps x_T to x0 = m + s z with z = (x_T - a m) / sqrt(a^2 s^2 + 1 - a^2)
    # (a = sqrt(abar_T)) preserved. DPM-Solver++(2M) (log-SNR spacing) must beat DDIM (its
    # first-order counterpart) at the same number of steps, and converge.
    m, s = 0.3, 0.5

    def eps_hat(sc, x_t, t):
        a = S.extract(sc.sqrt_alphas_cumprod, t, x_t)
        sig = S.extract(sc.sqrt_one_minus_alphas_cumprod, t, x_t)
        x0 = m + a * s ** 2 / (a ** 2 * s ** 2 + sig ** 2) * (x_t - a * m)
        return (x_t - a * x0) / sig

    fn = jax.tree_util.Partial(eps_hat, sched)
    x_init = jax.random.normal(jax.random.key(11), SHAPE)
    a_T = float(sched.sqrt_alphas_cumprod[-1])
    exact = m + s * (x_init - a_T * m) / np.sqrt(a_T ** 2 * s ** 2 + 1 - a_T ** 2)
    err = {}
    # (measured: ddim-8 0.43, dpmpp_2m-8 0.017, dpmpp_2m-50 0.002)
    for name, steps in (("ddim", 8), ("dpmpp_2m", 8), ("dpmpp_2m", 50)):
        out = samplers.sample(fn, SHAPE, jax.random.key(0), sched, sampler=name, steps=steps, clip_x0=False,
                              x_init=x_init)
        err[name, steps] = float(jnp.abs(out - exact).max())
    assert err["dpmpp_2m", 8] < 0.3 * err["ddim", 8], err
    assert err["dpmpp_2m", 50] < 0.01, err
