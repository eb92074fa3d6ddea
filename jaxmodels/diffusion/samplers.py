"""Samplers for discrete-time diffusion models: DDPM (ancestral), DDIM (eta) and
DPM-Solver++(2M), plus classifier-free guidance.

`sample(denoise_fn, shape, rng, sched, ...)` runs `steps` model evaluations at original
timesteps t_0 = 0 < ... < t_{steps-1} = T - 1, evenly spaced in t (iDDPM / DiT respacing)
or in log-SNR (DPM-Solver++), from x ~ N(0, I) down to x0; the model always sees original
timestep indices. Each step
goes from t_i to t_{i-1} (t_{-1} means "clean data": abar = 1). The whole loop is one
jitted lax.scan.

`denoise_fn(x_t, t_N) -> model output` is already guided; with learn_sigma its last axis
holds [prediction (C), variance interpolation v (C)]. Make it a `jax.tree_util.Partial`
(as `cfg_denoise_fn` does) so that its arrays (params, cond) are jit arguments: then
repeated calls with new params reuse one compiled sampler.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from jaxmodels.diffusion import schedules as S

SAMPLERS = ("ddpm", "ddim", "dpmpp_2m")


SPACINGS = ("time", "logsnr")


def spaced_timesteps(num_timesteps: int, steps: int) -> np.ndarray:
    """`steps` evenly spaced original timesteps from 0 to T-1 inclusive, increasing."""
    if not 1 <= steps <= num_timesteps:
        raise ValueError(f"steps must be in [1, {num_timesteps}], got {steps}")
    if steps == 1:
        return np.array([num_timesteps - 1])
    return np.round(np.linspace(0, num_timesteps - 1, steps)).astype(np.int32)


def logsnr_timesteps(alphas_cumprod: np.ndarray, steps: int) -> np.ndarray:
    """`steps` timesteps from 0 to T-1, increasing, evenly spaced in half-log-SNR lambda.

    DPM-Solver's "logSNR" spacing (recommended for low-resolution pixel models): evenly
    spaced lambda values mapped to the nearest integer timestep, then made strictly
    increasing (near t = 0, lambda moves faster than one timestep per step).
    """
    T = len(alphas_cumprod)
    if not 1 <= steps <= T:
        raise ValueError(f"steps must be in [1, {T}], got {steps}")
    if steps == 1:
        return np.array([T - 1])
    abar = np.asarray(alphas_cumprod, np.float64)
    lam_T = 0.5 * np.log(abar / (1.0 - abar))  # decreasing in t
    target = np.linspace(lam_T[0], lam_T[-1], steps)
    ts = np.round(np.interp(target, lam_T[::-1], np.arange(T)[::-1])).astype(np.int64)
    # Leave room for the other steps on both sides, then push collisions upwards.
    ts = np.clip(ts, np.arange(steps), T - steps + np.arange(steps))
    for k in range(1, steps):
        ts[k] = max(ts[k], ts[k - 1] + 1)
    assert ts[-1] == T - 1 and np.all(np.diff(ts) > 0), ts
    return ts.astype(np.int32)


def sampling_timesteps(sched: S.Schedule, steps: int, spacing: str) -> tuple:
    """The increasing original timesteps a sampler visits (a static tuple)."""
    if spacing == "time":
        ts = spaced_timesteps(sched.num_timesteps, steps)
    elif spacing == "logsnr":
        try:
            abar = np.asarray(sched.alphas_cumprod)
        except jax.errors.TracerArrayConversionError:
            raise ValueError("spacing='logsnr' needs a concrete schedule (call sample outside jit)") from None
        ts = logsnr_timesteps(abar, steps)
    else:
        raise ValueError(f"unknown spacing {spacing!r}; valid: {', '.join(SPACINGS)}")
    return tuple(int(t) for t in ts)


def _split_output(out: jax.Array, C: int, learn_sigma: bool):
    out = out.astype(jnp.float32)
    if learn_sigma:
        return out[..., :C], out[..., C:]
    return out[..., :C], None


def _x0_eps(pred, x, sqrt_ab, sqrt_1m_ab, prediction: str, clip_x0: bool):
    """(x0, eps) from the model prediction; eps is re-derived from the clipped x0 (iDDPM)."""
    if prediction == "eps":
        x0 = (x - sqrt_1m_ab * pred) / sqrt_ab
    elif prediction == "v":
        x0 = sqrt_ab * x - sqrt_1m_ab * pred
    elif prediction == "x0":
        x0 = pred
    else:
        raise ValueError(f"unknown prediction {prediction!r}; valid: eps, v, x0")
    if clip_x0:
        x0 = jnp.clip(x0, -1.0, 1.0)
    if prediction == "eps" and not clip_x0:
        eps = pred
    else:
        eps = (x - sqrt_ab * x0) / sqrt_1m_ab
    return x0, eps


def _sample(denoise_fn, rng, sched: S.Schedule, x_init, *, shape, sampler, ts, eta, prediction,
            learn_sigma, clip_x0):
    N, C = shape[0], shape[-1]
    steps = len(ts)
    ts_j = jnp.asarray(ts, jnp.int32)
    abar = jnp.take(sched.alphas_cumprod, ts_j)
    abar_prev = jnp.concatenate([jnp.ones((1,), jnp.float32), abar[:-1]])
    # Respaced process (iDDPM SpacedDiffusion): beta_i = 1 - abar_i / abar_{i-1}.
    beta = 1.0 - abar / abar_prev
    post_var = beta * (1.0 - abar_prev) / (1.0 - abar)
    post_logvar = jnp.log(jnp.concatenate([post_var[1:2], post_var[1:]]) if steps > 1
                          else jnp.maximum(post_var, 1e-20))
    coef1 = beta * jnp.sqrt(abar_prev) / (1.0 - abar)
    coef2 = (1.0 - abar_prev) * jnp.sqrt(1.0 - beta) / (1.0 - abar)
    # DPM-Solver++ half-log-SNR lambda = log(alpha / sigma); lambda_{-1} = +inf (clean data).
    lam = 0.5 * (jnp.log(abar) - jnp.log1p(-abar))

    rng, init_rng = jax.random.split(rng)
    x = jax.random.normal(init_rng, shape, jnp.float32) if x_init is None else x_init.astype(jnp.float32)

    def step(carry, i):
        x, x0_prev, h_prev, rng = carry
        rng, noise_rng = jax.random.split(rng)
        t_N = jnp.full((N,), ts_j[i], jnp.int32)
        pred, var_v = _split_output(denoise_fn(x, t_N), C, learn_sigma)
        sa, s1a = jnp.sqrt(abar[i]), jnp.sqrt(1.0 - abar[i])
        x0, eps = _x0_eps(pred, x, sa, s1a, prediction, clip_x0)
        noise = jax.random.normal(noise_rng, shape, jnp.float32)
        not_last = (i > 0).astype(jnp.float32)
        h = h_prev
        if sampler == "ddpm":
            mean = coef1[i] * x0 + coef2[i] * x
            if learn_sigma:
                frac = (var_v + 1.0) / 2.0
                logvar = frac * jnp.log(beta[i]) + (1.0 - frac) * post_logvar[i]
            else:
                logvar = post_logvar[i]
            x_new = mean + not_last * jnp.exp(0.5 * logvar) * noise
        elif sampler == "ddim":
            sigma = eta * jnp.sqrt((1.0 - abar_prev[i]) / (1.0 - abar[i]) * (1.0 - abar[i] / abar_prev[i]))
            dir_xt = jnp.sqrt(jnp.maximum(1.0 - abar_prev[i] - sigma ** 2, 0.0)) * eps
            x_new = jnp.sqrt(abar_prev[i]) * x0 + dir_xt + not_last * sigma * noise
        else:  # dpmpp_2m: multistep second order in the data prediction x0.
            lam_next = jnp.where(i > 0, lam[jnp.maximum(i - 1, 0)], jnp.inf)
            h = lam_next - lam[i]
            is_first = i == steps - 1
            r = h_prev / jnp.where(jnp.isfinite(h), h, 1.0)
            d = jnp.where(is_first, x0, (1.0 + 0.5 / r) * x0 - (0.5 / r) * x0_prev)
            # sigma_next / sigma x - alpha_next (e^{-h} - 1) D, written with finite pieces.
            sa_next = jnp.sqrt(abar_prev[i])
            s1a_next = jnp.sqrt(1.0 - abar_prev[i])
            stepped = (s1a_next / s1a) * x - sa_next * jnp.expm1(-jnp.where(jnp.isfinite(h), h, 0.0)) * d
            # The last step lands on clean data (sigma = 0): first order, x = D = x0.
            x_new = jnp.where(i > 0, stepped, x0)
        return (x_new, x0, h, rng), None

    init = (x, jnp.zeros(shape, jnp.float32), jnp.ones((), jnp.float32), rng)
    (x, _, _, _), _ = jax.lax.scan(step, init, jnp.arange(steps - 1, -1, -1))
    return x


_sample_jit = jax.jit(_sample, static_argnames=(
    "shape", "sampler", "ts", "eta", "prediction", "learn_sigma", "clip_x0"))


def sample(denoise_fn: Callable[[jax.Array, jax.Array], jax.Array], shape: tuple, rng: jax.Array,
           sched: S.Schedule, *, sampler: str = "ddim", steps: int = 50, eta: float = 0.0,
           prediction: str = "eps", learn_sigma: bool = False, clip_x0: bool = True,
           x_init: jax.Array | None = None, spacing: str | None = None) -> jax.Array:
    """Draws samples x0 [shape] (NHWC f32) by integrating the reverse process.

    denoise_fn(x_t [N,H,W,C], t_N int32) -> [N,H,W,C] (or 2C with learn_sigma).
    sampler: "ddpm" (ancestral; learned variance with learn_sigma, else the clipped
      posterior variance), "ddim" (eta = 0 deterministic, 1 ~ DDPM) or "dpmpp_2m"
      (DPM-Solver++(2M), data prediction, first order on the first and last steps).
    prediction: what the model's first C channels predict ("eps", "v" or "x0").
    clip_x0: clip the x0 estimate to [-1, 1] at every step (pixel-space data).
    x_init: the starting noise x_T (default: drawn from rng); with it, DDIM at eta = 0 is
      a deterministic function of x_init alone.
    spacing: which timesteps the `steps` evaluations visit: "time" (evenly spaced t, as
      iDDPM / DiT respacing) or "logsnr" (evenly spaced log-SNR, DPM-Solver's choice for
      low-resolution data). Default: "logsnr" for dpmpp_2m (with "time" its second-order
      extrapolation across the huge last log-SNR step near t = 0 makes it no better than
      DDIM), "time" otherwise.
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; valid: {', '.join(SAMPLERS)}")
    if spacing is None:
        spacing = "logsnr" if sampler == "dpmpp_2m" else "time"
    ts = sampling_timesteps(sched, int(steps), spacing)
    if not isinstance(denoise_fn, jax.tree_util.Partial):
        denoise_fn = jax.tree_util.Partial(denoise_fn)
    if x_init is not None and tuple(x_init.shape) != tuple(shape):
        raise ValueError(f"x_init has shape {tuple(x_init.shape)}, expected {tuple(shape)}")
    return _sample_jit(denoise_fn, rng, sched, x_init, shape=tuple(int(d) for d in shape), sampler=sampler,
                       ts=ts, eta=float(eta), prediction=prediction,
                       learn_sigma=bool(learn_sigma), clip_x0=bool(clip_x0))


@dataclasses.dataclass(frozen=True)
class _Guided:
    """Static part of a guided denoiser (hashable: the compiled sampler is cached on it)."""
    apply_fn: Callable
    scale: float

    def __call__(self, params, cond, x_t, t_N):
        if self.scale == 1.0:
            return self.apply_fn({"params": params}, x_t, t_N, cond, train=False)
        N, C = x_t.shape[0], x_t.shape[-1]
        drop_N = cond.get("drop", jnp.zeros((N,), bool))
        both = {k: jnp.concatenate([v, v]) for k, v in cond.items() if k != "drop"}
        both["drop"] = jnp.concatenate([drop_N, jnp.ones((N,), bool)])
        out = self.apply_fn({"params": params}, jnp.concatenate([x_t, x_t]),
                            jnp.concatenate([t_N, t_N]), both, train=False)
        out_c, out_u = out[:N], out[N:]
        # Guidance acts on the prediction channels; a learned variance (channels C..2C)
        # is taken from the conditional half, as in DiT.
        guided = out_u[..., :C] + self.scale * (out_c[..., :C] - out_u[..., :C])
        return jnp.concatenate([guided, out_c[..., C:]], axis=-1)


def cfg_denoise_fn(apply_fn: Callable, params: Any, cond: Mapping[str, jax.Array],
                   scale: float) -> jax.tree_util.Partial:
    """Classifier-free guided denoiser: out = uncond + scale (cond - uncond).

    apply_fn: model.apply (called as apply_fn({"params": p}, x_t, t_N, cond, train=False)).
    cond: the conditioning dict for the N samples (label / text_tokens / text_emb, ...);
      the null half is the same dict with "drop" all True, evaluated in one batched call
      of 2N. scale == 1 evaluates only the conditional model (exactly).
    Returns a jax.tree_util.Partial(x_t, t_N) usable as `sample`'s denoise_fn.
    """
    return jax.tree_util.Partial(_Guided(apply_fn, float(scale)), params, dict(cond))
