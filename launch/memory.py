"""Will a config fit? Compiles its train step on abstract shapes (nothing allocated) and
prints params / optimizer / activations against memory.budget_gb.

    python -m launch.memory --config configs/gpt2_124m.py[:variant] [--config.train.micro_batches=4 ...]
    python -m launch.memory --config configs/mamba_130m.py --fit

--fit searches micro-batches, remat policy, optimizer-state format and scan chunk for the
fastest plan that fits (jaxmodels/train/autofit.py) and prints it as flags to add; training
with --config.memory.auto_fit=True runs that plan by itself.
Exit status 0 when it fits (--fit: a plan was found), 1 when it does not, 2 for a config error.
"""
from launch import _env  # noqa: F401  (must come before jax)

import sys

from jaxmodels.config import ConfigError


def main(argv=None) -> int:
    from launch.train import parse
    argv = sys.argv[1:] if argv is None else argv
    fit = "--fit" in argv
    argv = [a for a in argv if a != "--fit"]
    try:
        _, cfg = parse(argv, __doc__, workdir=False)
        if fit:
            from jaxmodels.train.autofit import search
            result = search(cfg, log=lambda line: print(line, flush=True))
            print(result.summary())
            return 0 if result.plan is not None else 1
        from jaxmodels.train.memory import advice, estimate
        report = estimate(cfg)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(report)
    if not report.fits:
        print(f"does not fit; try: {advice(cfg)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
