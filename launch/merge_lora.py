"""Merges a LoRA / QLoRA run's adapters into its base weights and writes a Hugging Face folder.

    python -m launch.merge_lora --workdir runs/llama_lora_tiny --out merged/ [--bf16]

The newest checkpoint's adapters are folded in (W + alpha/r * A B; NF4 bases de-quantised
first), and the folder (config.json + safetensors, tokenizer files copied from init_from)
loads with transformers' AutoModelForCausalLM.from_pretrained(out) or init_from=out.
"""
from launch import _env  # noqa: F401  (must come before jax)

import argparse
import sys

from jaxmodels.config import ConfigError


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", required=True, help="the run directory (holds checkpoints/)")
    parser.add_argument("--out", required=True, help="output HF folder")
    parser.add_argument("--bf16", action="store_true", help="write bf16 weights (default f32)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    import numpy as np
    from jaxmodels.convert.llama import merge_workdir
    dtype = np.float32
    if args.bf16:
        import ml_dtypes
        dtype = ml_dtypes.bfloat16
    from launch._runs import require_run
    try:
        info = merge_workdir(require_run(args.workdir), args.out, dtype=dtype)
    except (ConfigError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.out} ({info['num_params'] / 1e6:.2f}M params, adapters merged)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
