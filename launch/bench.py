"""Benchmark a config's train step: median step time, tokens/s (or images/s), model FLOP/s, MFU.

    python -m launch.bench --config configs/gpt2_124m.py [--steps 20] [--warmup 3] [--real-data] \
        [--config.train.batch_size=16 ...]

By default the batch is synthetic (the step alone is timed; no dataset needed).
"""
from launch import _env  # noqa: F401  (must come before jax)

import argparse
import sys

from jaxmodels.config import ConfigError


def main(argv=None) -> int:
    from launch.train import parse
    argv = sys.argv[1:] if argv is None else argv
    extra = argparse.ArgumentParser(add_help=False)
    extra.add_argument("--steps", type=int, default=20)
    extra.add_argument("--warmup", type=int, default=3)
    extra.add_argument("--real-data", action="store_true")
    opts, rest = extra.parse_known_args(argv)
    try:
        _, cfg = parse(rest, __doc__, workdir=False)
        from jaxmodels.train.bench import benchmark
        result = benchmark(cfg, steps=opts.steps, warmup=opts.warmup, real_data=opts.real_data)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for key, value in result.items():
        if isinstance(value, float):
            value = f"{value:.4g}" if key != "mfu" else f"{100 * value:.1f}%"
        print(f"{key:>20}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
