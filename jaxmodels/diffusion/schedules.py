"""Discrete-time Gaussian diffusion: noise schedules and the closed-form conversions.

Notation (DDPM / iDDPM): timesteps t = 0 .. T-1, abar_t = prod_{s<=t} (1 - beta_s),
  x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps                     (q_sample)
  v   = sqrt(abar_t) eps - sqrt(1 - abar_t) x0                      (Salimans & Ho, 2022)
The posterior q(x_{t-1} | x_t, x0) = N(c1 x0 + c2 x_t, beta~_t) uses the mean coefficients
posterior_mean_coef1/2 and the variance beta~_t = beta_t (1 - abar_{t-1}) / (1 - abar_t),
whose log is "clipped" (beta~_0 = 0 is replaced by beta~_1) as in iDDPM.

Schedules are built in float64 numpy (as iDDPM does; cumulative products of 1000 numbers
lose precision in f32) and stored as f32 jnp arrays in a pytree, so a Schedule can be a
jit argument. Every helper takes `t` as an int array [N] and broadcasts per example over
x's trailing axes.
"""
from __future__ import annotations

import math

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

SCHEDULE_KINDS = ("linear", "cosine")


@flax.struct.dataclass
class Schedule:
    """All per-timestep constants of one diffusion process (each an f32 array [T])."""
    betas: jax.Array
    alphas_cumprod: jax.Array
    alphas_cumprod_prev: jax.Array
    sqrt_alphas_cumprod: jax.Array
    sqrt_one_minus_alphas_cumprod: jax.Array
    sqrt_recip_alphas_cumprod: jax.Array
    sqrt_recipm1_alphas_cumprod: jax.Array
    posterior_variance: jax.Array
    posterior_log_variance_clipped: jax.Array
    posterior_mean_coef1: jax.Array
    posterior_mean_coef2: jax.Array
    num_timesteps: int = flax.struct.field(pytree_node=False, default=1000)


def linear_betas(num_timesteps: int) -> np.ndarray:
    """DDPM's linear betas 1e-4 .. 0.02 for T=1000, scaled by 1000/T for other T (iDDPM)."""
    scale = 1000.0 / num_timesteps
    return np.linspace(scale * 1e-4, scale * 0.02, num_timesteps, dtype=np.float64)


def cosine_betas(num_timesteps: int, s: float = 0.008, max_beta: float = 0.999) -> np.ndarray:
    """iDDPM's cosine schedule: abar(u) = cos^2((u + s) / (1 + s) * pi/2), betas capped."""
    def abar(u):
        return math.cos((u + s) / (1 + s) * math.pi / 2) ** 2
    return np.array([min(1 - abar((i + 1) / num_timesteps) / abar(i / num_timesteps), max_beta)
                     for i in range(num_timesteps)], dtype=np.float64)


def schedule_from_betas(betas: np.ndarray) -> Schedule:
    """Derives every Schedule field from betas [T] (float64 math, f32 storage)."""
    betas = np.asarray(betas, dtype=np.float64)
    T = betas.shape[0]
    alphas = 1.0 - betas
    abar = np.cumprod(alphas)
    abar_prev = np.append(1.0, abar[:-1])
    post_var = betas * (1.0 - abar_prev) / (1.0 - abar)
    # beta~_0 = 0: its log is clipped to beta~_1 (iDDPM); with T = 1 there is nothing to clip to.
    post_log_var = np.log(np.append(post_var[1], post_var[1:]) if T > 1 else np.maximum(post_var, 1e-20))
    f32 = lambda a: jnp.asarray(a, jnp.float32)  # noqa: E731
    return Schedule(
        betas=f32(betas),
        alphas_cumprod=f32(abar),
        alphas_cumprod_prev=f32(abar_prev),
        sqrt_alphas_cumprod=f32(np.sqrt(abar)),
        sqrt_one_minus_alphas_cumprod=f32(np.sqrt(1.0 - abar)),
        sqrt_recip_alphas_cumprod=f32(np.sqrt(1.0 / abar)),
        sqrt_recipm1_alphas_cumprod=f32(np.sqrt(1.0 / abar - 1.0)),
        posterior_variance=f32(post_var),
        posterior_log_variance_clipped=f32(post_log_var),
        posterior_mean_coef1=f32(betas * np.sqrt(abar_prev) / (1.0 - abar)),
        posterior_mean_coef2=f32((1.0 - abar_prev) * np.sqrt(alphas) / (1.0 - abar)),
        num_timesteps=int(T),
    )


def make_schedule(kind: str = "linear", num_timesteps: int = 1000) -> Schedule:
    """The DDPM "linear" (1e-4 .. 0.02) or iDDPM "cosine" (beta <= 0.999) schedule."""
    if kind == "linear":
        return schedule_from_betas(linear_betas(num_timesteps))
    if kind == "cosine":
        return schedule_from_betas(cosine_betas(num_timesteps))
    raise ValueError(f"unknown schedule kind {kind!r}; valid: {', '.join(SCHEDULE_KINDS)}")


def extract(arr_T: jax.Array, t_N: jax.Array, x: jax.Array) -> jax.Array:
    """arr[t] shaped [N, 1, ..., 1] to broadcast against x [N, ...]; f32."""
    vals_N = jnp.take(arr_T, jnp.asarray(t_N, jnp.int32), axis=0).astype(jnp.float32)
    return vals_N.reshape((-1,) + (1,) * (x.ndim - 1))


def q_sample(s: Schedule, x0: jax.Array, t: jax.Array, noise: jax.Array) -> jax.Array:
    """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise."""
    return extract(s.sqrt_alphas_cumprod, t, x0) * x0 + extract(s.sqrt_one_minus_alphas_cumprod, t, x0) * noise


def predict_x0_from_eps(s: Schedule, x_t: jax.Array, t: jax.Array, eps: jax.Array) -> jax.Array:
    """x0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar), written as iDDPM does."""
    return extract(s.sqrt_recip_alphas_cumprod, t, x_t) * x_t - extract(s.sqrt_recipm1_alphas_cumprod, t, x_t) * eps


def predict_eps_from_x0(s: Schedule, x_t: jax.Array, t: jax.Array, x0: jax.Array) -> jax.Array:
    """eps = (x_t - sqrt(abar) x0) / sqrt(1 - abar)."""
    return ((extract(s.sqrt_recip_alphas_cumprod, t, x_t) * x_t - x0)
            / extract(s.sqrt_recipm1_alphas_cumprod, t, x_t))


def v_from(s: Schedule, x0: jax.Array, eps: jax.Array, t: jax.Array) -> jax.Array:
    """The v-prediction target v = sqrt(abar) eps - sqrt(1 - abar) x0."""
    return extract(s.sqrt_alphas_cumprod, t, x0) * eps - extract(s.sqrt_one_minus_alphas_cumprod, t, x0) * x0


def x0_from_v(s: Schedule, x_t: jax.Array, v: jax.Array, t: jax.Array) -> jax.Array:
    """x0 = sqrt(abar) x_t - sqrt(1 - abar) v."""
    return extract(s.sqrt_alphas_cumprod, t, x_t) * x_t - extract(s.sqrt_one_minus_alphas_cumprod, t, x_t) * v


def eps_from_v(s: Schedule, x_t: jax.Array, v: jax.Array, t: jax.Array) -> jax.Array:
    """eps = sqrt(1 - abar) x_t + sqrt(abar) v."""
    return extract(s.sqrt_one_minus_alphas_cumprod, t, x_t) * x_t + extract(s.sqrt_alphas_cumprod, t, x_t) * v


def snr(s: Schedule, t: jax.Array) -> jax.Array:
    """Signal-to-noise ratio abar_t / (1 - abar_t), shape [N]."""
    abar = jnp.take(s.alphas_cumprod, jnp.asarray(t, jnp.int32), axis=0)
    return abar / (1.0 - abar)


def q_posterior_mean_variance(s: Schedule, x0: jax.Array, x_t: jax.Array, t: jax.Array):
    """Mean and clipped log-variance of q(x_{t-1} | x_t, x0)."""
    mean = extract(s.posterior_mean_coef1, t, x_t) * x0 + extract(s.posterior_mean_coef2, t, x_t) * x_t
    return mean, extract(s.posterior_log_variance_clipped, t, x_t)


def model_log_variance(s: Schedule, var_v: jax.Array, t: jax.Array) -> jax.Array:
    """iDDPM learned variance: log sigma^2 = f log beta_t + (1 - f) log beta~_t, f = (v + 1)/2."""
    frac = (var_v.astype(jnp.float32) + 1.0) / 2.0
    min_log = extract(s.posterior_log_variance_clipped, t, var_v)
    max_log = extract(jnp.log(s.betas), t, var_v)
    return frac * max_log + (1.0 - frac) * min_log
