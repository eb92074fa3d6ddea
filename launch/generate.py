"""Generates text from a trained run's newest checkpoint (its EMA params when it kept one).

    python -m launch.generate --workdir runs/shakespeare --prompt "ROMEO:" --max_new_tokens 200
    python -m launch.generate --workdir runs/x --prompt "Once" --temperature 0.8 --top_k 40
    python -m launch.generate --workdir runs/x --prompt "Once" --greedy
    python -m launch.generate --workdir runs/bitnet_b158_cpu --packed   # BitNet: from packed weights
    python -m launch.generate --hf path/to/bitnet-b1.58-2B-4T --prompt "The capital of France is"
        # a Hugging Face folder (or a launch.convert output) with its tokenizer.json

Models with learned positions (GPT) or a trained context (LLaMA) read at most their last
block_size / max_len tokens: longer generations slide the window (as nanoGPT's generate
does); recurrent models (Mamba, RWKV, RetNet) carry their state to any length.
"""
from __future__ import annotations

from launch import _env  # noqa: F401  (must come before jax)

import argparse
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--workdir", help="the training run's workdir")
    where.add_argument("--hf", help="a Hugging Face folder or launch.convert output (tokenizer: "
                                    "its tokenizer.json, or --tokenizer)")
    parser.add_argument("--tokenizer", default="", help="with --hf: folder holding tokenizer.json")
    parser.add_argument("--packed", action="store_true",
                        help="BitNet: pack the ternary weights (uint8, 4 per byte) and decode from them")
    parser.add_argument("--prompt", default="\n", help="text to continue")
    parser.add_argument("--max_new_tokens", type=int, default=200)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top_k", type=int, default=None)
    parser.add_argument("--top_p", type=float, default=None)
    parser.add_argument("--greedy", action="store_true", help="argmax decoding (ignores sampling flags)")
    parser.add_argument("--num_samples", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no_ema", action="store_true", help="use the raw params even if an EMA exists")
    args = parser.parse_args(argv)

    from jaxmodels.config import ConfigError
    from launch._runs import require_run
    try:
        workdir = None if args.hf else require_run(args.workdir)
        out, tokenizer = _generate(args, workdir)
    except (ConfigError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    import numpy as np
    for i, row in enumerate(np.asarray(out)):
        if args.num_samples > 1:
            print(f"--- sample {i} ---")
        print(tokenizer.decode(row.tolist()))
    return 0


def load_model(workdir: str = "", hf: str = "", tokenizer_dir: str = "", no_ema: bool = False):
    """(model, params, tokenizer) from a run's newest checkpoint or from a Hugging Face /
    launch.convert folder (its own tokenizer, or the one in tokenizer_dir). launch.chat uses it too."""
    from jaxmodels.data.tokenizers import build_tokenizer, tokenizer_for_folder
    from jaxmodels.models import build_model
    from jaxmodels.train.checkpoint import load_params

    if hf:
        from jaxmodels.convert.pretrained import load_pretrained

        model_cfg, params = load_pretrained(hf)
        return build_model(model_cfg), params, tokenizer_for_folder(tokenizer_dir or hf)
    cfg, params = load_params(workdir, use_ema=not no_ema)
    return build_model(cfg.model), params, build_tokenizer(cfg.data)


def _generate(args, workdir):
    import jax
    import numpy as np

    from jaxmodels.generate import greedy, sample

    model, params, tokenizer = load_model(workdir or "", args.hf or "", args.tokenizer, args.no_ema)
    if args.packed and not hasattr(model.cfg, "packed"):
        raise ValueError("--packed is for BitNet models (model.name=bitnet)")
    if args.packed and not model.cfg.packed:
        from jaxmodels.convert.bitnet import pack_params, packed_model

        params, model = pack_params(model.cfg, params), packed_model(model)
    ids = tokenizer.encode(args.prompt)
    if not ids:
        raise ValueError("the prompt encodes to no tokens; pass a non-empty --prompt")
    if args.max_new_tokens < 0 or args.num_samples < 1:
        raise ValueError("need --max_new_tokens >= 0 and --num_samples >= 1")
    prompt = np.tile(np.asarray(ids, np.int32)[None], (args.num_samples, 1))
    if args.greedy:
        out = greedy(model, params, prompt, args.max_new_tokens)
    else:
        out = sample(model, params, prompt, args.max_new_tokens, jax.random.key(args.seed),
                     temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)
    return out, tokenizer


if __name__ == "__main__":
    sys.exit(main())
