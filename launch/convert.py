"""Converts a Hugging Face checkpoint folder into a folder `--config.init_from=` starts from.

    python -m launch.convert --hf /path/to/gpt2 --out weights/gpt2
    python -m launch.train --config configs/<x>.py --config.init_from=weights/gpt2 ...

Prints the `model` section a config should use so its shapes match the weights.
"""
from __future__ import annotations

from launch import _env  # noqa: F401  (must come before jax)

import argparse
import os
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hf", required=True, help="HF folder: config.json + *.safetensors")
    parser.add_argument("--out", required=True, help="output folder (jaxmodels_model.json + params.safetensors)")
    args = parser.parse_args(argv)

    from jaxmodels.config import ConfigError
    from jaxmodels.convert.pretrained import load_pretrained, save_pretrained

    try:
        if not os.path.isdir(args.hf):
            raise ConfigError(f"--hf {args.hf!r} is not a folder (expected config.json + *.safetensors)")
        model_cfg, params = load_pretrained(args.hf)
        save_pretrained(model_cfg, params, args.out)
    except (ConfigError, OSError, KeyError, ValueError) as e:  # one line, not a traceback
        text = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"error: {text}", file=sys.stderr)
        return 2
    import jax
    n = sum(int(x.size) for x in jax.tree.leaves(params))
    print(f"wrote {args.out} ({n / 1e6:.2f}M params)")
    print("Use this model section in the config (its shapes must match the weights):")
    fields = ",\n".join(f"        {k!r}: {v!r}" for k, v in model_cfg.items())
    print(f"    c.model = ml_collections.ConfigDict({{\n{fields},\n    }})")
    print(f"    c.init_from = {args.out!r}")
    print("(or override the fields the config sets: " + " ".join(f"--config.model.{k}={v}" for k, v in model_cfg.items()
                                                 if k != "name") + f" --config.init_from={args.out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
