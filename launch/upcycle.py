"""Sparse upcycling: a dense GPT / LLaMA checkpoint -> an MoE whose experts are copies of the
dense FFN and which computes exactly what the dense model did (jaxmodels.convert.upcycle).

    python -m launch.upcycle --from runs/moe_gpt_dense_cpu --experts 8 --top-k 2 --out upcycled
    python -m launch.train --config configs/moe_gpt.py:cpu --config.model.moe_hidden=0 \\
        --config.init_from=upcycled --workdir runs/upcycled

--from: a run directory (its newest checkpoint), a `launch.convert` output or a Hugging
Face folder. The new model section is printed; the training config must match it.
"""
from __future__ import annotations

from launch import _env  # noqa: F401  (must come before jax)

import argparse
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--from", dest="src", required=True, help="run dir, launch.convert output or HF folder")
    parser.add_argument("--experts", type=int, default=8)
    parser.add_argument("--top-k", type=int, default=2)
    parser.add_argument("--every", type=int, default=1, help="MoE FFN every n-th layer (default: every layer)")
    parser.add_argument("--seed", type=int, default=0, help="router init seed")
    parser.add_argument("--out", required=True, help="output folder for --config.init_from")
    args = parser.parse_args(argv)

    from jaxmodels.convert.upcycle import upcycle_folder

    cfg = upcycle_folder(args.src, args.out, args.experts, args.top_k, args.every, args.seed)
    moe = {k: v for k, v in cfg.items() if k.startswith("moe_")}
    print(f"wrote {args.out}: {cfg['name']} with {args.experts} experts (top-{args.top_k}) every "
          f"{args.every} layer(s), experts copied from the dense FFN")
    print("train it with: --config.init_from=" + args.out + " and a model section matching "
          + " ".join(f"--config.model.{k}={v}" for k, v in moe.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
