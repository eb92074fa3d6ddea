"""Which caption attributes does a text-to-image run on the embedded shapes actually use?

    PYTHONPATH=. python benchmarks/caption_readout.py --workdir runs/pixart_small_cpu [--num 64]

A diffusion model used as a classifier: for `--num` real held-out images, the denoising loss
is computed with the true caption and with every caption that differs only in one attribute
(8 shapes, 6 colours, ...), at three noise levels (t = 200, 500, 800, the same noise for
every candidate). The attribute's readout accuracy is how often the true value gives the
lowest summed loss. Chance is 1 / (number of values). It needs no sampling and no judge, so
it tells "the caption's shape word never reaches the prediction" apart from "the model reads
it but cannot draw the shape yet" (then sampling accuracy lags the readout).
"""
from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from jaxmodels.data import glyphs
from jaxmodels.data.images import encode_caption
from jaxmodels.diffusion import judge as judge_lib
from jaxmodels.diffusion import losses
from jaxmodels.diffusion import schedules as S
from jaxmodels.tasks.diffusion import _load

TIMESTEPS = (200, 500, 800)


def readout(workdir: str, num: int = 64, seed: int = 0) -> dict:
    """{attribute: readout accuracy} of the run's (EMA) params on `num` held-out images."""
    task, params = _load(workdir)
    x0, attrs = judge_lib.generate(num, seed=77, split="holdout")
    x0 = jnp.asarray(x0)
    length = int(task.cfg.data.caption_len)
    apply = jax.jit(lambda p, x, t, c: task.model.apply({"params": p}, x, t, c))
    rng = np.random.default_rng(seed)
    noises = [jnp.asarray(rng.standard_normal(x0.shape), jnp.float32) for _ in TIMESTEPS]
    out = {}
    for k, name in enumerate(glyphs.ATTRIBUTE_NAMES):
        loss = np.zeros((len(glyphs.ATTRIBUTES[name]), num))
        for value in range(len(loss)):
            swapped = attrs.copy()
            swapped[:, k] = value
            tokens, mask = zip(*(encode_caption(glyphs.caption(tuple(a)), length) for a in swapped))
            cond = {"text_tokens": jnp.asarray(np.stack(tokens)), "text_mask": jnp.asarray(np.stack(mask))}
            for t_value, noise in zip(TIMESTEPS, noises):
                t = jnp.full((num,), t_value, jnp.int32)
                x_t = S.q_sample(task.sched, x0, t, noise)
                per_example = losses.diffusion_loss(apply(params, x_t, t, cond), x0, x_t, t, noise, task.sched,
                                                    prediction=task.opts["prediction"], learn_sigma=task.learn_sigma)
                loss[value] += np.asarray(per_example)
        out[name] = float(np.mean(loss.argmin(0) == attrs[:, k]))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--num", type=int, default=64)
    args = parser.parse_args()
    for name, acc in readout(args.workdir, args.num).items():
        chance = 1.0 / len(glyphs.ATTRIBUTES[name])
        print(f"{name:>10}: readout accuracy {acc:.3f} (chance {chance:.3f})")


if __name__ == "__main__":
    main()
