"""Sample images from a trained diffusion run (its newest checkpoint, EMA params if kept).

    python -m launch.sample --workdir runs/dit_small_cpu --num 64 --cfg 4.0 --sampler ddim --steps 50 [--seed 0]

Writes <workdir>/samples/sample_<sampler><steps>_cfg<cfg>_seed<seed>[_noema].png (class-conditional:
row r = class r) and a .npz beside it: samples float32 [N,H,W,C] in [-1, 1] (latents for
latent runs) plus labels, or captions and attrs for text-to-image runs. A latent run whose
config names its VAE (data.vae, a diffusers AutoencoderKL folder) is decoded: the PNG shows
the pictures and the .npz adds them as "images" (uint8).
"""
from launch import _env  # noqa: F401  (must come before jax)

import argparse
import sys

from jaxmodels.config import ConfigError


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", required=True, help="the run directory (holds checkpoints/)")
    parser.add_argument("--num", type=int, default=64, help="images to sample")
    parser.add_argument("--cfg", type=float, default=4.0, help="classifier-free guidance scale (1 = none)")
    parser.add_argument("--sampler", default="ddim", help="ddim | ddpm | dpmpp_2m")
    parser.add_argument("--steps", type=int, default=50, help="denoising steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-ema", action="store_true", help="use the raw params instead of the EMA")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    from jaxmodels.tasks.diffusion import sample_workdir
    from launch._runs import require_run
    try:
        out = sample_workdir(require_run(args.workdir), num=args.num, cfg_scale=args.cfg, sampler=args.sampler,
                             steps=args.steps, seed=args.seed, use_ema=not args.no_ema)
    except (ConfigError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out['png']} and {out['npz']} ({out['samples'].shape[0]} samples)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
