"""Exports a training run (or a launch.convert folder) as a Hugging Face folder that
`transformers` loads (config.json + model.safetensors): Mamba -> MambaForCausalLM,
GPT -> GPT2LMHeadModel.

    python -m launch.export_hf --workdir runs/mamba_130m --out mamba-hf
    python -m launch.export_hf --hf weights/mamba --out mamba-hf

The run's EMA params are exported when it kept them. Adapters (LoRA) are not part of the
HF layout: merge them first (launch.merge_lora).
"""
from __future__ import annotations

from launch import _env  # noqa: F401  (must come before jax)

import argparse
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--workdir", help="a training run (its newest checkpoint)")
    where.add_argument("--hf", help="a launch.convert output (jaxmodels_model.json + params)")
    parser.add_argument("--out", required=True, help="output HF folder")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)

    from jaxmodels.config import ConfigError
    from jaxmodels.convert import to_hf
    from launch._runs import load_model

    try:
        model_cfg, params = load_model(args.workdir, args.hf)
        to_hf(model_cfg, params, args.out)
    except (ConfigError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.out} ({model_cfg['name']}, Hugging Face layout)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
