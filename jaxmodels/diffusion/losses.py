"""Diffusion training losses: simple MSE (eps / v / x0 prediction), min-SNR-gamma weighting,
and iDDPM's hybrid loss for models that also predict their variance (DiT's learn_sigma).

All losses are per example (mean over pixels and channels), computed in f32.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from jaxmodels.diffusion import schedules as S

PREDICTIONS = ("eps", "v", "x0")


def _mean_flat(x: jax.Array) -> jax.Array:
    return jnp.mean(x, axis=tuple(range(1, x.ndim)))


def normal_kl(mean1, logvar1, mean2, logvar2) -> jax.Array:
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)), elementwise, in nats."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + jnp.exp(logvar1 - logvar2)
                  + jnp.square(mean1 - mean2) * jnp.exp(-logvar2))


def _approx_std_normal_cdf(x: jax.Array) -> jax.Array:
    # The tanh approximation iDDPM uses, so the t=0 NLL matches its numbers.
    return 0.5 * (1.0 + jnp.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def discretized_gaussian_log_likelihood(x: jax.Array, means: jax.Array, log_scales: jax.Array) -> jax.Array:
    """log P(x) of 8-bit data in [-1, 1] under a Gaussian discretised to 255 bins (iDDPM), nats."""
    centered = x - means
    inv_stdv = jnp.exp(-log_scales)
    cdf_plus = _approx_std_normal_cdf(inv_stdv * (centered + 1.0 / 255.0))
    cdf_min = _approx_std_normal_cdf(inv_stdv * (centered - 1.0 / 255.0))
    log_cdf_plus = jnp.log(jnp.maximum(cdf_plus, 1e-12))
    log_one_minus_cdf_min = jnp.log(jnp.maximum(1.0 - cdf_min, 1e-12))
    log_cdf_delta = jnp.log(jnp.maximum(cdf_plus - cdf_min, 1e-12))
    return jnp.where(x < -0.999, log_cdf_plus,
                     jnp.where(x > 0.999, log_one_minus_cdf_min, log_cdf_delta))


def x0_from_prediction(sched: S.Schedule, pred: jax.Array, x_t: jax.Array, t: jax.Array,
                       prediction: str) -> jax.Array:
    """The model's x0 estimate from an eps, v or x0 prediction."""
    if prediction == "eps":
        return S.predict_x0_from_eps(sched, x_t, t, pred)
    if prediction == "v":
        return S.x0_from_v(sched, x_t, pred, t)
    if prediction == "x0":
        return pred
    raise ValueError(f"unknown prediction {prediction!r}; valid: {', '.join(PREDICTIONS)}")


def vlb_terms(sched: S.Schedule, x0_pred: jax.Array, var_v: jax.Array, x0: jax.Array,
              x_t: jax.Array, t: jax.Array) -> jax.Array:
    """iDDPM's variational bound term per example, in bits per dimension (>= 0).

    KL(q(x_{t-1}|x_t,x0) || p(x_{t-1}|x_t)) for t > 0 and the discretised-Gaussian decoder
    NLL -log p(x0|x1) at t = 0. p's mean comes from x0_pred, its variance from var_v.
    """
    true_mean, true_logvar = S.q_posterior_mean_variance(sched, x0, x_t, t)
    model_mean, _ = S.q_posterior_mean_variance(sched, x0_pred, x_t, t)
    model_logvar = S.model_log_variance(sched, var_v, t)
    kl_N = _mean_flat(normal_kl(true_mean, true_logvar, model_mean, model_logvar)) / math.log(2.0)
    nll_N = -_mean_flat(discretized_gaussian_log_likelihood(
        x0, means=model_mean, log_scales=0.5 * model_logvar)) / math.log(2.0)
    return jnp.where(t == 0, nll_N, kl_N)


def min_snr_weight(sched: S.Schedule, t: jax.Array, gamma: float, prediction: str) -> jax.Array:
    """Min-SNR-gamma loss weights [N] (Hang et al. 2023) for the given prediction target."""
    snr_N = S.snr(sched, t)
    clipped = jnp.minimum(snr_N, gamma)
    if prediction == "eps":
        return clipped / snr_N
    if prediction == "v":
        return clipped / (snr_N + 1.0)
    return clipped


def diffusion_loss(model_out: jax.Array, x0: jax.Array, x_t: jax.Array, t: jax.Array,
                   noise: jax.Array, sched: S.Schedule, *, prediction: str = "eps",
                   learn_sigma: bool = False, min_snr_gamma: float = 0.0,
                   return_terms: bool = False):
    """Per-example training loss [N] of a diffusion backbone's output.

    model_out: [N, H, W, C] (or [N, H, W, 2C] with learn_sigma: prediction then the
      variance interpolation v in [-1, 1]); x0, x_t, noise: [N, H, W, C]; t: int [N].
    prediction: what the first C channels predict: "eps", "v" or "x0".
    learn_sigma: iDDPM hybrid loss = MSE + VLB, where the VLB sees a stop-gradient copy
      of the mean prediction (so only the variance learns from it), scaled by T / 1000
      (iDDPM's RESCALED_MSE; equal to DiT's plain sum at T = 1000).
    min_snr_gamma: > 0 weights the MSE by min(SNR, gamma) / (SNR or SNR + 1).
    return_terms: also return {"mse": [N], "vb": [N]} (vb is zeros without learn_sigma).
    """
    model_out = model_out.astype(jnp.float32)
    C = x0.shape[-1]
    if learn_sigma:
        if model_out.shape[-1] != 2 * C:
            raise ValueError(f"learn_sigma needs {2 * C} output channels, got {model_out.shape[-1]}")
        pred, var_v = model_out[..., :C], model_out[..., C:]
    else:
        pred, var_v = model_out, None
    if prediction == "eps":
        target = noise
    elif prediction == "v":
        target = S.v_from(sched, x0, noise, t)
    elif prediction == "x0":
        target = x0
    else:
        raise ValueError(f"unknown prediction {prediction!r}; valid: {', '.join(PREDICTIONS)}")
    mse_N = _mean_flat(jnp.square(target.astype(jnp.float32) - pred))
    if min_snr_gamma > 0:
        mse_N = mse_N * min_snr_weight(sched, t, min_snr_gamma, prediction)
    vb_N = jnp.zeros_like(mse_N)
    if learn_sigma:
        x0_pred = x0_from_prediction(sched, jax.lax.stop_gradient(pred), x_t, t, prediction)
        vb_N = vlb_terms(sched, x0_pred, var_v, x0, x_t, t) * (sched.num_timesteps / 1000.0)
    loss_N = mse_N + vb_N
    if return_terms:
        return loss_N, {"mse": mse_N, "vb": vb_N}
    return loss_N
