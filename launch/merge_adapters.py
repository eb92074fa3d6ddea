"""Folds a run's `model.adapters` (LoRA / QLoRA / state tuning) into its base weights and
writes a plain checkpoint of the same family that `--config.init_from=<out>` (and
launch.generate --init_from) loads.

    python -m launch.merge_adapters --workdir runs/rwkv7_2p9b_lora --out merged/

W + alpha/r A B for every adapter; NF4 kernels de-quantised; a bf16 base back in f32; the
tuned RWKV state is dropped (it has no place in a plain model). LLaMA's own lora_rank runs
merge to a Hugging Face folder with launch.merge_lora.
"""
from launch import _env  # noqa: F401  (must come before jax)

import argparse
import sys

from jaxmodels.config import ConfigError


def merge_run(workdir: str, out: str) -> dict:
    """Merges the newest checkpoint of `workdir` into `out`; returns {"num_params", "model"}."""
    import jax
    import ml_collections
    import numpy as np

    from jaxmodels.convert.pretrained import save_pretrained
    from jaxmodels.layers import adapters
    from jaxmodels.tasks import build_task
    from jaxmodels.train.checkpoint import load_params

    cfg, params = load_params(workdir, use_ema=False)
    spec = adapters.spec_from(cfg.model.get("adapters", None))
    if spec is None:
        raise ConfigError(f"the run in {workdir} has no model.adapters to merge (LLaMA lora_rank runs: "
                          f"python -m launch.merge_lora)")
    if cfg.model.name == "bitnet" and cfg.model.get("quant", "b1.58") == "b1.58":
        # W + alpha/r A B is no longer ternary: re-quantising it is another model.
        raise ConfigError("BitNet's LoRA sits beside a ternary base and does not fold into it; keep the "
                          "adapter run (launch.generate --workdir) or train with --config.model.quant=none")
    base_cfg = ml_collections.ConfigDict(cfg.to_dict())
    base_cfg.model.adapters = None
    base_cfg.init_from = ""
    task = build_task(base_cfg)
    shapes = jax.eval_shape(task.init_params, jax.random.PRNGKey(0))
    merged = adapters.merge(jax.tree.map(np.asarray, params), spec, shapes)
    save_pretrained(base_cfg.model, merged, out)
    return {"num_params": int(sum(np.prod(x.shape) for x in jax.tree.leaves(merged))),
            "model": base_cfg.model.name}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", required=True, help="the run directory (holds checkpoints/)")
    parser.add_argument("--out", required=True, help="output folder (a launch.convert-style checkpoint)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    from launch._runs import require_run
    try:
        info = merge_run(require_run(args.workdir), args.out)
    except (ConfigError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.out} ({info['model']}, {info['num_params'] / 1e6:.2f}M params, adapters merged)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
