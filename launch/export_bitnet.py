"""Exports a BitNet b1.58 run (or an imported checkpoint) as a Hugging Face BitNet folder.

    python -m launch.export_bitnet --workdir runs/bitnet_b158_cpu --out bitnet-packed        # packed
    python -m launch.export_bitnet --workdir runs/bitnet_b158_cpu --out bitnet-bf16 --layout master

layout "packed" (default): every block projection as uint8 [out/4, in] (four ternary values
per byte) + weight_scale, as microsoft/bitnet-b1.58-2B-4T ships it: inference only.
layout "master": the f32 latent weights written in bf16, as microsoft/bitnet-b1.58-2B-4T-bf16
(training / fine-tuning). Both load back with init_from / launch.generate --hf, and with
transformers' BitNet quantizer (quantization_config in config.json). Prints the parameter
bytes of the exported model next to the same model in bf16.
"""
from launch import _env  # noqa: F401  (must come before jax)

import argparse
import os
import sys

from jaxmodels.config import ConfigError


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--workdir", help="a bitnet training run (its newest checkpoint)")
    where.add_argument("--hf", help="a BitNet HF folder or launch.convert output to re-export")
    parser.add_argument("--out", required=True, help="output HF folder")
    parser.add_argument("--layout", default="packed", choices=("packed", "master"))
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)

    from jaxmodels.convert.bitnet import to_hf
    from jaxmodels.models import build_model
    from launch._runs import load_model

    try:
        model_cfg, params = load_model(args.workdir, args.hf)
        if model_cfg.get("name") != "bitnet":
            raise ConfigError(f"model.name={model_cfg.get('name')!r}: launch.export_bitnet exports bitnet models")
        model = build_model(model_cfg)
        to_hf(model, params, args.out, layout=args.layout)
    except (ConfigError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    size = sum(os.path.getsize(os.path.join(args.out, f)) for f in os.listdir(args.out) if f.endswith(".safetensors"))
    from jaxmodels.models.bitnet import num_params
    bf16 = 2 * num_params(model.cfg)
    print(f"wrote {args.out} ({args.layout}): {size / 2 ** 20:.2f} MiB of tensors; the same model in bf16: "
          f"{bf16 / 2 ** 20:.2f} MiB ({size / bf16:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
