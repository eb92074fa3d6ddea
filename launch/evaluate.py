"""Judge a diffusion run trained on the embedded dataset (configs/dit_small.py, pixart_small.py).

    python -m launch.evaluate --workdir runs/dit_small_cpu [--num 256] [--cfg 4.0] [--sampler ddim] [--steps 50]

Samples --num images from the newest checkpoint (EMA params if kept) and prints the judge's
accuracy: the shape class for class-conditional runs, each attribute (shape, colour, size,
position, background) of held-out captions for text-to-image runs; and the Frechet distance
to as many real images in the judge's feature space (comparable only at equal --num).
The judge (jaxmodels/diffusion/judge.py) trains once, on first use (a few minutes on a CPU;
it says so), and is cached.

FID (any image run, pixels or latents with data.vae):
    python -m launch.evaluate --fid --workdir RUN --ref REF --inception fid_inception.safetensors [--num 10000]
    python -m launch.evaluate --fid --images FOLDER --ref REF --inception fid_inception.safetensors
REF is an image folder, a statistics .npz (mu, sigma: pytorch-fid --save-stats, ADM's
reference batches) or an images .npz (arr_0). The weights are pytorch-fid's, converted once
with launch.convert_fid_inception; FID numbers are comparable with pytorch-fid's.

Inception Score from the same network's classifier (with or without --fid; no --ref needed):
    python -m launch.evaluate --is --workdir RUN --inception fid_inception.safetensors [--is-splits 10]
    python -m launch.evaluate --is --images FOLDER --inception fid_inception.safetensors

LMs (--tokens / --hellaswag / --hf): perplexity and HellaSwag accuracy, see launch/evaluate_lm.py.
"""
from launch import _env  # noqa: F401  (must come before jax)

import argparse
import json
import sys

from jaxmodels.config import ConfigError


def main(argv=None) -> int:
    from launch import evaluate_lm
    if evaluate_lm.wants_lm(sys.argv[1:] if argv is None else argv):  # LMs: perplexity / HellaSwag
        return evaluate_lm.main(argv)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", help="a diffusion run (required unless --fid --images)")
    parser.add_argument("--fid", action="store_true", help="FID against --ref instead of the judge")
    parser.add_argument("--ref", default="", help="FID reference: image folder, stats .npz or images .npz")
    parser.add_argument("--is", dest="inception_score", action="store_true",
                        help="Inception Score of the samples (or --images) from the FID Inception's logits")
    parser.add_argument("--is-splits", type=int, default=10, help="Inception Score: mean/std over this many parts")
    parser.add_argument("--images", default="", help="with --fid / --is: score this image folder instead of a run")
    parser.add_argument("--inception", default="", help="FID Inception weights (.safetensors from "
                        "launch.convert_fid_inception)")
    parser.add_argument("--batch-size", type=int, default=50, help="FID Inception batch")
    parser.add_argument("--num", type=int, default=256)
    parser.add_argument("--cfg", type=float, default=None, help="guidance scale (default: the run's task.cfg_scale)")
    parser.add_argument("--sampler", default=None, help="default: the run's task.sampler")
    parser.add_argument("--steps", type=int, default=None, help="default: the run's task.sample_steps")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--no-ema", action="store_true")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    from jaxmodels.tasks.diffusion import evaluate_workdir, fid_workdir
    from launch._runs import require_run
    if args.fid and not args.ref:
        parser.error("--fid needs --ref <image folder, stats .npz or images .npz>")
    inception = args.fid or args.inception_score
    if not args.workdir and not (inception and args.images):
        parser.error("give --workdir (or --fid / --is with --images FOLDER)")
    is_splits = args.is_splits if args.inception_score else 0
    ref = args.ref if args.fid else ""
    try:
        if inception and args.images:
            from jaxmodels.diffusion.fid import fid_against
            metrics = fid_against(ref, args.inception, folder=args.images, batch_size=args.batch_size,
                                  is_splits=is_splits)
        elif inception:
            metrics = fid_workdir(require_run(args.workdir), ref, args.inception, num=args.num,
                                  cfg_scale=args.cfg, sampler=args.sampler, steps=args.steps, seed=args.seed,
                                  use_ema=not args.no_ema, batch_size=args.batch_size, is_splits=is_splits)
        else:
            metrics = evaluate_workdir(require_run(args.workdir), num=args.num, cfg_scale=args.cfg,
                                       sampler=args.sampler, steps=args.steps, seed=args.seed,
                                       use_ema=not args.no_ema)
    except (ConfigError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for key, value in metrics.items():
        print(f"{key:>22}: {value:.4f}" if isinstance(value, float) else f"{key:>22}: {value}")
    print(json.dumps(metrics))
    return 0


if __name__ == "__main__":
    sys.exit(main())
