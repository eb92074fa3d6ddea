"""Will a config fit? Compiles its train step on abstract shapes (nothing allocated) and
prints params / optimizer / activations against memory.budget_gb.

    python -m launch.memory --config configs/gpt2_124m.py[:variant] [--config.train.micro_batches=4 ...]

Exit status 0 when it fits, 1 when it does not, 2 for a config error.
"""
import os
import sys

# XLA:CPU has no bf16 matmul: it upcasts each bf16 weight to f32 first, and its loop-invariant
# code motion then hoists that upcast of the whole stacked [n_layers, ...] weight out of the
# layer scan, so a CPU compile of a bf16-stored (frozen) base counts an f32 copy of the
# entire model that a GPU, whose matmuls read bf16, never makes. Off for this estimate
# (a CPU host with no GPU), before jax starts; docs/adapters.md has the measurement.
if not os.path.exists("/dev/nvidia0") and os.environ.get("JAX_PLATFORMS", "cpu") == "cpu":
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + " --xla_disable_hlo_passes=while-loop-invariant-code-motion").strip()

from launch import _env  # noqa: F401,E402  (must come before jax)

from jaxmodels.config import ConfigError  # noqa: E402


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
