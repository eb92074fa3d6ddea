"""Will a config fit? Compiles its train step on abstract shapes (nothing allocated) and
prints params / optimizer / activations against memory.budget_gb.

    python -m launch.memory --config configs/gpt2_124m.py[:variant] [--config.train.micro_batches=4 ...]

Exit status 0 when it fits, 1 when it does not, 2 for a config error.
"""
from launch import _env  # noqa: F401  (must come before jax)

import sys

from jaxmodels.config import ConfigError


def main(argv=None) -> int:
    from launch.train import parse
    argv = sys.argv[1:] if argv is None else argv
    try:
        _, cfg = parse(argv, __doc__, workdir=False)
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
