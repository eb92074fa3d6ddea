"""Converts a Hugging Face checkpoint folder into a folder `--config.init_from=` starts from.

    python -m launch.convert --hf /path/to/gpt2 --out weights/gpt2
    python -m launch.train --config configs/<x>.py --config.init_from=weights/gpt2 ...

Prints the `model` section a config should use so its shapes match the weights.
"""
from __future__ import annotations

import argparse
import json
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hf", required=True, help="HF folder: config.json + *.safetensors")
    parser.add_argument("--out", required=True, help="output folder (jaxmodels_model.json + params.safetensors)")
    args = parser.parse_args(argv)

    from jaxmodels.convert.pretrained import load_pretrained, save_pretrained

    model_cfg, params = load_pretrained(args.hf)
    save_pretrained(model_cfg, params, args.out)
    import jax
    n = sum(int(x.size) for x in jax.tree.leaves(params))
    print(f"wrote {args.out} ({n / 1e6:.2f}M params)")
    print("model section for the config (or pass these as --config.model.<field>=...):")
    print("  c.model = ml_collections.ConfigDict(" + json.dumps(model_cfg, indent=4).replace("\n", "\n  ") + ")")
    print(f"  c.init_from = {args.out!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
