""""Frankenstein" MoE (mergekit-moe style): a base LLaMA-family model + one FFN per source
checkpoint -> a Mixtral folder that transformers and `--config.init_from` both load.

    python -m launch.merge_moe --config merge.yaml --out frankenmoe
    python -m launch.train --config configs/frankenmoe_finetune.py --config.init_from=frankenmoe

merge.yaml lists base_model, gate_mode (random | cheap_embed | hidden), experts_per_token and
the experts (source_model, positive_prompts, negative_prompts); see jaxmodels/convert/merge_moe.py.
"""
from __future__ import annotations

from launch import _env  # noqa: F401  (must come before jax)

import argparse
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="merge.yaml")
    parser.add_argument("--out", required=True, help="output Mixtral folder")
    args = parser.parse_args(argv)

    from jaxmodels.convert.merge_moe import merge_to_folder

    spec = merge_to_folder(args.config, args.out)
    print(f"wrote {args.out}: Mixtral layout, {len(spec['experts'])} experts (top-{spec['top_k']}), "
          f"gates: {spec['gate_mode']}, base {spec['base_model']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
