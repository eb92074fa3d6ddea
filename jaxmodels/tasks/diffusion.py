"""The diffusion task: every diffusion backbone (DiT, PixArt, U-Net) trains through it.

Config `task` section (defaults in TASK_DEFAULTS):
  conditioning   "class" (batch label -> cond["label"]), "text" (caption bytes or
                 precomputed text_emb -> cond["text_*"]) or "none"; "" (default): the
                 model's own `conditioning` field (DiT/PixArt), else "class"
  schedule, num_timesteps, prediction ("eps" | "v" | "x0"), min_snr_gamma
  timestep_sampling "uniform" (default) or "logit_normal" with timestep_mean/_std
  learn_sigma    only for models without a `learn_sigma` field (DiT's own field wins)
  cfg_scale, sampler, sample_steps, eta         how evaluate() samples
  eval_samples                                  images per evaluation (0 disables it)
  eval_judge                                    judge metrics (embedded dataset only)

loss: t ~ U{0..T-1} (or logit-normal), x_t = q_sample(x0, t, eps), model(x_t, t, cond, train=True) (which
drops labels/captions itself for classifier-free guidance), diffusion_loss, mean over the
batch; aux["weight"] = batch size.

evaluate: samples a fixed set of conditions (class-conditional: eval_samples / 8 per
class for 8 classes; text: held-out captions of the embedded set), writes
workdir/samples/step_XXXXXX.png (+ .npz), and, on the embedded dataset, the judge's
accuracy and Frechet distance against real held-out images.
"""
from __future__ import annotations

import os
from typing import Any, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np

from jaxmodels.config import ConfigError
from jaxmodels.data import glyphs
from jaxmodels.data import images as image_data
from jaxmodels.diffusion import losses, samplers
from jaxmodels.diffusion import schedules as S
from jaxmodels.diffusion.grid import save_grid
from jaxmodels.layers.conditioning import CONDITIONINGS
from jaxmodels.tasks.base import Task

TASK_DEFAULTS = dict(
    conditioning="", schedule="linear", num_timesteps=1000, prediction="eps",
    learn_sigma=False, min_snr_gamma=0.0, cfg_scale=4.0, sampler="ddim", sample_steps=50,
    eta=0.0, eval_samples=64, eval_judge=True, eval_seed=0,
    timestep_sampling="uniform", timestep_mean=0.0, timestep_std=1.0,
)
TIMESTEP_SAMPLINGS = ("uniform", "logit_normal")


def sample_timesteps(rng: jax.Array, n: int, num_timesteps: int, kind: str = "uniform",
                     mean: float = 0.0, std: float = 1.0) -> jax.Array:
    """Training timesteps int32 [n]: uniform (DDPM, DiT) or logit-normal (SD3, Esser et al.
    2024): t = floor(sigmoid(mean + std * z) * T). mean > 0 puts more of the batch at high
    noise, where a model must decide the layout and the class shape from the condition."""
    if kind == "uniform":
        return jax.random.randint(rng, (n,), 0, num_timesteps)
    if kind == "logit_normal":
        u = jax.nn.sigmoid(mean + std * jax.random.normal(rng, (n,)))
        return jnp.clip(jnp.floor(u * num_timesteps), 0, num_timesteps - 1).astype(jnp.int32)
    raise ConfigError(f"unknown task.timestep_sampling {kind!r}; valid: {', '.join(TIMESTEP_SAMPLINGS)}")


def diffusion_task_config(**overrides):
    """The `task` section of a diffusion config: TASK_DEFAULTS + overrides, name "diffusion"."""
    import ml_collections

    t = dict(TASK_DEFAULTS, name="diffusion")
    t.update(overrides)
    return ml_collections.ConfigDict(t)


def count_matmul_flops(fn, *args) -> float:
    """FLOPs of the dot_general / conv ops in fn(*args), walking the jaxpr (scan bodies x
    their length, so a scanned layer stack counts every layer; XLA's cost_analysis counts
    a loop body once). The C++ CPU custom calls that replace dots (jaxmodels.kernels.cpu_matmul,
    cpu_attention) count as the dots they replace, so the count is the same on every backend."""
    from jaxmodels.kernels.cpu_attention import FORWARD_TARGET, forward_flops
    from jaxmodels.kernels.cpu_matmul import TARGET as MATMUL_TARGET, matmul_flops

    custom_calls = {MATMUL_TARGET: matmul_flops, FORWARD_TARGET: forward_flops}

    def walk(jaxpr, mult: float) -> float:
        total = 0.0
        for eqn in jaxpr.eqns:
            name = eqn.primitive.name
            if name == "dot_general":
                (lhs_c, _), _ = eqn.params["dimension_numbers"]
                lhs = eqn.invars[0].aval.shape
                contract = float(np.prod([lhs[d] for d in lhs_c])) if lhs_c else 1.0
                total += mult * 2.0 * float(np.prod(eqn.outvars[0].aval.shape)) * contract
            elif name == "ffi_call" and eqn.params["target_name"] in custom_calls:
                shapes = [v.aval.shape for v in eqn.invars]
                total += mult * custom_calls[eqn.params["target_name"]](*shapes)
            elif name == "conv_general_dilated":
                rhs = eqn.invars[1].aval.shape  # kernel; in/out feature dims among these
                dn = eqn.params["dimension_numbers"]
                spatial = [rhs[d] for d in dn.rhs_spec[2:]]
                in_per_group = rhs[dn.rhs_spec[1]]
                total += mult * 2.0 * float(np.prod(eqn.outvars[0].aval.shape)) * float(np.prod(spatial)) * in_per_group
            for sub_name, sub in eqn.params.items():
                inner = []
                if hasattr(sub, "jaxpr") and hasattr(sub.jaxpr, "eqns"):
                    inner = [sub.jaxpr]
                elif hasattr(sub, "eqns"):
                    inner = [sub]
                elif isinstance(sub, (tuple, list)):
                    inner = [b.jaxpr if hasattr(b, "jaxpr") else b for b in sub if hasattr(b, "eqns") or hasattr(b, "jaxpr")]
                    if name == "cond" and inner:  # one branch runs: count the costliest
                        total += max(walk(b, mult) for b in inner)
                        continue
                factor = float(eqn.params.get("length", 1)) if name == "scan" else 1.0
                for b in inner:
                    total += walk(b, mult * factor)
        return total

    return walk(jax.make_jaxpr(fn)(*args).jaxpr, 1.0)


class DiffusionTask(Task):
    unit = "images"

    def __init__(self, cfg):
        super().__init__(cfg)
        opts = dict(TASK_DEFAULTS)
        unknown = sorted(set(cfg.task.keys()) - set(opts) - {"name"})
        if unknown:
            raise ConfigError(f"unknown task field(s) {unknown} for task 'diffusion'; valid: "
                              f"{', '.join(sorted(opts))}")
        opts.update({k: v for k, v in cfg.task.items() if k != "name"})
        model_cfg = getattr(self.model, "cfg", None)
        if not opts["conditioning"]:
            opts["conditioning"] = getattr(model_cfg, "conditioning", "class")
        if opts["conditioning"] not in CONDITIONINGS:
            raise ConfigError(f"task.conditioning {opts['conditioning']!r}; valid: {', '.join(CONDITIONINGS)}")
        if opts["timestep_sampling"] not in TIMESTEP_SAMPLINGS:
            raise ConfigError(f"unknown task.timestep_sampling {opts['timestep_sampling']!r}; "
                              f"valid: {', '.join(TIMESTEP_SAMPLINGS)}")
        if opts["sampler"] not in samplers.SAMPLERS:
            raise ConfigError(f"task.sampler {opts['sampler']!r}; valid: {', '.join(samplers.SAMPLERS)}")
        if opts["prediction"] not in losses.PREDICTIONS:
            raise ConfigError(f"task.prediction {opts['prediction']!r}; valid: {', '.join(losses.PREDICTIONS)}")
        self.opts = opts
        self.sched = S.make_schedule(opts["schedule"], int(opts["num_timesteps"]))
        self.learn_sigma = bool(getattr(model_cfg, "learn_sigma", opts["learn_sigma"]))
        shapes = image_data.example_shapes(cfg.data)
        self.image_shape = shapes["image"][0]
        self._flops: Optional[float] = None

    # ------------------------------------------------------------ conditioning
    def cond_from_batch(self, batch: Mapping[str, Any]) -> dict:
        """The model's cond dict from a batch (keys per task.conditioning)."""
        kind = self.opts["conditioning"]
        if kind == "class":
            return {"label": batch["label"]}
        if kind == "text":
            if "text_emb" in batch:
                return {"text_emb": batch["text_emb"], "text_mask": batch["text_mask"]}
            return {"text_tokens": batch["text_tokens"], "text_mask": batch["text_mask"]}
        return {}

    def _dummy_batch(self, n: int) -> dict:
        return {k: jnp.zeros((n,) + tuple(shape), dtype)
                for k, (shape, dtype) in image_data.example_shapes(self.cfg.data).items()}

    # ------------------------------------------------------------ Task contract
    def init_params(self, rng: jax.Array):
        batch = self._dummy_batch(1)
        t = jnp.zeros((1,), jnp.int32)
        variables = self.model.init({"params": rng, "dropout": rng}, batch["image"], t,
                                    self.cond_from_batch(batch), train=False)
        return variables["params"]

    def loss(self, params, batch, rng, train: bool = True):
        x0 = jnp.asarray(batch["image"], jnp.float32)
        n = x0.shape[0]
        r_t, r_noise, r_drop = jax.random.split(rng, 3)
        t = sample_timesteps(r_t, n, self.sched.num_timesteps, self.opts["timestep_sampling"],
                             float(self.opts["timestep_mean"]), float(self.opts["timestep_std"]))
        noise = jax.random.normal(r_noise, x0.shape, jnp.float32)
        x_t = S.q_sample(self.sched, x0, t, noise)
        out = self.model.apply({"params": params}, x_t, t, self.cond_from_batch(batch), train=train,
                               rngs={"dropout": r_drop})
        loss_N, terms = losses.diffusion_loss(
            out, x0, x_t, t, noise, self.sched, prediction=self.opts["prediction"],
            learn_sigma=self.learn_sigma, min_snr_gamma=float(self.opts["min_snr_gamma"]),
            return_terms=True)
        aux = {"weight": jnp.asarray(n, jnp.float32), "mse": terms["mse"].mean()}
        if self.learn_sigma:
            aux["vb"] = terms["vb"].mean()
        return loss_N.mean(), aux

    def dataset(self, split: str, batch_size: int, seed: int):
        return image_data.image_dataset(self.cfg.data, split, batch_size, seed)

    def abstract_batch(self, batch_size: int) -> dict:
        return {k: jax.ShapeDtypeStruct((batch_size,) + tuple(shape), dtype)
                for k, (shape, dtype) in image_data.example_shapes(self.cfg.data).items()}

    def flops_per_example(self) -> float:
        """3x the forward's matmul/conv FLOPs on one example (counted once from the jaxpr)."""
        if self._flops is None:
            params = jax.eval_shape(self.init_params, jax.random.key(0))
            batch = self.abstract_batch(1)

            def forward(p, b):
                return self.model.apply({"params": p}, b["image"], jnp.zeros((1,), jnp.int32),
                                        self.cond_from_batch(b), train=False)
            try:
                self._flops = 3.0 * count_matmul_flops(forward, params, batch)
            except Exception:  # an exotic primitive should not stop training; MFU is optional
                self._flops = 0.0
        return self._flops

    # ------------------------------------------------------------ sampling / evaluation
    def eval_conditions(self, num: int, seed: int = 0) -> dict:
        """Conditions for `num` evaluation samples (host numpy).

        class: labels 0..K-1 in blocks (row r of an 8-wide grid is one class when num = 8K);
        text: held-out captions of the embedded set with their attributes (or real val
        captions/embeddings for other data). Returns {"cond": ..., "labels"|"attrs"|"captions"}.
        """
        kind = self.opts["conditioning"]
        data = self.cfg.data
        if kind == "class":
            k = int(self.cfg.data.get("num_classes", glyphs.NUM_CLASSES))
            per = max(1, num // min(k, num)) if num else 1
            labels = (np.arange(num) // per % k).astype(np.int32)
            return {"cond": {"label": labels}, "labels": labels}
        if kind == "none":
            return {"cond": {}}
        if data.get("source", "embedded") == "embedded":
            length = int(data.get("caption_len", 80))
            sizes = glyphs.size_indices(tuple(data.get("glyph_sizes", ()) or ()))
            pool = glyphs.combo_pool("holdout", sizes)
            rng = np.random.default_rng(seed)
            attrs = np.array([glyphs.combo_attrs(int(c)) for c in rng.choice(pool, num)], np.int32)
            captions = [glyphs.caption(a) for a in attrs]
            tokens, mask = zip(*(image_data.encode_caption(c, length) for c in captions))
            return {"cond": {"text_tokens": np.stack(tokens), "text_mask": np.stack(mask)},
                    "attrs": attrs, "captions": captions}
        source = image_data.image_source(data, "val")
        items = [source[i % len(source)] for i in range(num)]
        if "text_emb" in items[0]:
            return {"cond": {"text_emb": np.stack([it["text_emb"] for it in items]),
                             "text_mask": np.stack([it["text_mask"] for it in items])}}
        length = int(data.get("caption_len", 80))
        captions = [it.get("caption", "") for it in items]
        tokens, mask = zip(*(image_data.encode_caption(c, length) for c in captions))
        return {"cond": {"text_tokens": np.stack(tokens), "text_mask": np.stack(mask)}, "captions": captions}

    def sample(self, params, cond: Mapping[str, Any], rng: jax.Array, *, cfg_scale: Optional[float] = None,
               sampler: Optional[str] = None, steps: Optional[int] = None, eta: Optional[float] = None,
               batch_size: int = 256) -> np.ndarray:
        """Samples one image per condition (float32 [N,H,W,C] in data units), in batches."""
        o = self.opts
        cond = {k: np.asarray(v) for k, v in cond.items()}
        n = len(next(iter(cond.values()))) if cond else batch_size
        scale = float(o["cfg_scale"] if cfg_scale is None else cfg_scale)
        if o["conditioning"] == "none":
            scale = 1.0
        pixel_data = self.cfg.data.get("source", "embedded") != "arrays"
        out = []
        for i in range(0, n, batch_size):
            chunk = {k: jnp.asarray(v[i:i + batch_size]) for k, v in cond.items()}
            m = len(next(iter(chunk.values()))) if chunk else min(batch_size, n - i)
            denoise = samplers.cfg_denoise_fn(self.model.apply, params, chunk, scale)
            x = samplers.sample(denoise, (m,) + tuple(self.image_shape), jax.random.fold_in(rng, i), self.sched,
                                sampler=sampler or o["sampler"], steps=int(steps or o["sample_steps"]),
                                eta=float(o["eta"] if eta is None else eta), prediction=o["prediction"],
                                learn_sigma=self.learn_sigma, clip_x0=pixel_data)
            out.append(np.asarray(x))
        return np.concatenate(out)

    def judge_metrics(self, samples: np.ndarray, conds: dict, judge=None) -> dict:
        """Judge accuracy (class) or attribute accuracy (text) and the Frechet distance to
        as many real images (embedded dataset only). Real images come from the held-out
        combinations when the samples were prompted with held-out captions, else from all
        combinations (what balanced class labels produce). Frechet distances are biased by
        the sample count: compare them only at equal N."""
        from jaxmodels.diffusion import judge as judge_lib

        judge = judge or judge_lib.default_judge()
        real, _ = judge_lib.generate(len(samples), seed=77, split="holdout" if "attrs" in conds else "all")
        out = {"frechet": judge_lib.frechet_distance(real, samples, judge)}
        if "labels" in conds:
            out["judge_accuracy"] = judge_lib.judge_accuracy(samples, conds["labels"], judge)
        if "attrs" in conds:
            acc = judge_lib.attribute_accuracy(samples, conds["attrs"], judge)
            out.update({f"attr_{k}": v for k, v in acc.items()})
        return out

    def evaluate(self, params, step: int, workdir: str) -> dict:
        o = self.opts
        num = int(o["eval_samples"])
        if num <= 0:
            return {}
        conds = self.eval_conditions(num, seed=int(o["eval_seed"]))
        samples = self.sample(params, conds["cond"], jax.random.key(int(o["eval_seed"])))
        folder = os.path.join(workdir, "samples")
        os.makedirs(folder, exist_ok=True)
        rows = None
        if "labels" in conds and num % 8 == 0:
            rows = num // 8
        pixels = decode_samples(self.cfg.data, samples)   # latent runs with data.vae: pictures
        save_grid(pixels if pixels is not None else samples if samples.shape[-1] in (1, 3) else samples[..., :3],
                  os.path.join(folder, f"step_{step:06d}.png"), rows=rows)
        metrics: dict = {}
        # The judge reads any RGB size (it resizes to its 32x32); "none" gets the Frechet only.
        judged = (o["eval_judge"] and self.cfg.data.get("source", "embedded") == "embedded"
                  and self.image_shape[-1] == 3)
        if judged:
            metrics.update(self.judge_metrics(samples, conds))
        return metrics


# ---------------------------------------------------------------- launch.sample / launch.evaluate

def _load(workdir: str, use_ema: bool = True):
    from jaxmodels.tasks import build_task
    from jaxmodels.train.checkpoint import load_params

    cfg, params = load_params(workdir, use_ema=use_ema)
    return build_task(cfg), params


def decode_samples(data_cfg, samples: np.ndarray) -> Optional[np.ndarray]:
    """uint8 images [N, H, W, 3] of latent samples when data.vae names the VAE that encoded
    them (samples are in data units, latents x data.latent_scale); None without a VAE."""
    vae_path = data_cfg.get("vae", "") if hasattr(data_cfg, "get") else ""
    if not vae_path:
        return None
    from jaxmodels.convert.vae import load_vae
    from jaxmodels.models.vae import decode_in_batches

    model, params = load_vae(vae_path)
    if samples.shape[-1] != model.cfg.latent_channels:
        raise ConfigError(f"data.vae={vae_path!r} decodes {model.cfg.latent_channels}-channel latents; the "
                          f"samples have {samples.shape[-1]} channels (wrong VAE, or unset data.vae)")
    scale = float(data_cfg.get("latent_scale", 1.0))
    return decode_in_batches(model, params, np.asarray(samples) / scale + model.cfg.shift_factor)


def sample_workdir(workdir: str, num: int = 64, cfg_scale: float = 4.0, sampler: str = "ddim",
                   steps: int = 50, seed: int = 0, use_ema: bool = True) -> dict:
    """Samples `num` images from the newest checkpoint of a run; writes a grid PNG and an
    .npz (samples float32 [N,H,W,C] in data units, labels / captions / attrs, and, when
    data.vae names a VAE, "images": the decoded uint8 pictures the grid shows) into
    workdir/samples/. Returns {"png", "npz", "samples", ...the conditions}."""
    task, params = _load(workdir, use_ema)
    conds = task.eval_conditions(num, seed=seed)
    samples = task.sample(params, conds["cond"], jax.random.key(seed), cfg_scale=cfg_scale,
                          sampler=sampler, steps=steps)
    # The raw params' samples get their own file: they must not overwrite the EMA's.
    stem = os.path.join(workdir, "samples", f"sample_{sampler}{steps}_cfg{cfg_scale:g}_seed{seed}"
                        + ("" if use_ema else "_noema"))
    rows = num // 8 if ("labels" in conds and num % 8 == 0) else None
    extra = {k: np.asarray(v) for k, v in conds.items() if k in ("labels", "attrs", "captions")}
    pixels = decode_samples(task.cfg.data, samples)
    if pixels is not None:   # a latent run with a VAE: the grid shows decoded images
        extra["images"] = pixels
    png = save_grid(pixels if pixels is not None else samples if samples.shape[-1] in (1, 3) else samples[..., :3],
                    stem + ".png", rows=rows)
    np.savez(stem + ".npz", samples=samples, **extra)
    return {"png": png, "npz": stem + ".npz", "samples": samples, **extra}


def evaluate_workdir(workdir: str, num: int = 256, cfg_scale: Optional[float] = None,
                     sampler: Optional[str] = None, steps: Optional[int] = None, seed: int = 1,
                     use_ema: bool = True) -> dict:
    """Judge metrics of `num` fresh samples of a run on the embedded dataset: judge
    accuracy (class-conditional) or per-attribute accuracy on held-out captions (text),
    and the Frechet distance in the judge's feature space."""
    task, params = _load(workdir, use_ema)
    if task.cfg.data.get("source", "embedded") != "embedded" or task.opts["conditioning"] == "none":
        raise ConfigError("launch.evaluate judges conditional models trained on the embedded dataset "
                          f"(this run: data.source={task.cfg.data.get('source')!r}, "
                          f"conditioning={task.opts['conditioning']!r})")
    conds = task.eval_conditions(num, seed=seed)
    samples = task.sample(params, conds["cond"], jax.random.key(seed), cfg_scale=cfg_scale,
                          sampler=sampler, steps=steps)
    metrics = task.judge_metrics(samples, conds)
    metrics.update(num=num, cfg_scale=float(task.opts["cfg_scale"] if cfg_scale is None else cfg_scale),
                   sampler=sampler or task.opts["sampler"], steps=int(steps or task.opts["sample_steps"]))
    return metrics


def fid_workdir(workdir: str, ref: str, inception: str, num: int = 256, cfg_scale: Optional[float] = None,
                sampler: Optional[str] = None, steps: Optional[int] = None, seed: int = 1,
                use_ema: bool = True, batch_size: int = 50, progress: bool = True, is_splits: int = 0) -> dict:
    """FID of `num` fresh samples of a run (decoded through data.vae for latent runs) against
    a reference (image folder, statistics .npz or images .npz; see diffusion/fid.py; ref ""
    skips it); is_splits > 0 adds their Inception Score."""
    from jaxmodels.diffusion.fid import fid_against

    task, params = _load(workdir, use_ema)
    conds = task.eval_conditions(num, seed=seed)
    samples = task.sample(params, conds["cond"], jax.random.key(seed), cfg_scale=cfg_scale,
                          sampler=sampler, steps=steps)
    images = decode_samples(task.cfg.data, samples)
    if images is None and samples.shape[-1] == 1:   # grayscale pixels: as RGB, as pytorch-fid reads them
        samples = np.repeat(np.asarray(samples), 3, axis=-1)
    if images is None:
        if samples.shape[-1] != 3:
            raise ConfigError(f"FID needs RGB pictures; this run samples {samples.shape[-1]}-channel latents: "
                              "set data.vae to the VAE that encoded them (--config.data.vae at training)")
        images = image_data.from_unit_range(samples)
    metrics = fid_against(ref, inception, images=images, batch_size=batch_size, progress=progress,
                          is_splits=is_splits)
    metrics.update(cfg_scale=float(task.opts["cfg_scale"] if cfg_scale is None else cfg_scale),
                   sampler=sampler or task.opts["sampler"], steps=int(steps or task.opts["sample_steps"]))
    return metrics

