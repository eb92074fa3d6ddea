"""Evaluates a causal LM (any family): perplexity on a token file and / or HellaSwag accuracy.
Reached through `python -m launch.evaluate` when an LM flag (--tokens, --hellaswag, --hf) is given.

    python -m launch.evaluate --workdir runs/gpt2_124m --tokens data/owt/data_val_000000.bin
    python -m launch.evaluate --hf path/to/gpt2 --hellaswag hellaswag_val.jsonl --limit 1000
    python -m launch.evaluate --hf path/to/model --tokens val.bin --hellaswag hs.jsonl --json

--tokens: a launch.prepare / llm.c / nanoGPT .bin (or .npy) file, or a folder of shards (its
val split). --hellaswag: JSONL lines {"ctx", "endings", "label"} (llm.c's scoring: lowest
mean completion loss = acc_norm; lowest sum = acc).
"""
from __future__ import annotations

from launch import _env  # noqa: F401  (must come before jax)

import argparse
import json
import os
import sys

LM_FLAGS = ("--tokens", "--hellaswag", "--hf")


def wants_lm(argv) -> bool:
    return any(a.split("=")[0] in LM_FLAGS for a in argv)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--workdir", help="an LM training run")
    where.add_argument("--hf", help="a Hugging Face / launch.convert folder")
    p.add_argument("--tokenizer", default="", help="with --hf: the folder holding the tokenizer")
    p.add_argument("--tokens", default="", help="token file or shard folder for perplexity")
    p.add_argument("--hellaswag", default="", help="HellaSwag-format JSONL")
    p.add_argument("--seq_len", type=int, default=0, help="perplexity window (default: the model's context)")
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--max_tokens", type=int, default=0, help="score at most this many tokens (0: all)")
    p.add_argument("--limit", type=int, default=0, help="score at most this many HellaSwag examples")
    p.add_argument("--no_ema", action="store_true")
    p.add_argument("--json", action="store_true", help="print one JSON line only")
    a = p.parse_args(sys.argv[1:] if argv is None else argv)
    if not a.tokens and not a.hellaswag:
        p.error("give --tokens and / or --hellaswag")

    from jaxmodels.config import ConfigError
    from jaxmodels.tasks import lm_eval
    from launch.generate import load_model

    try:
        model, params, tokenizer = load_model(a.workdir or "", a.hf or "", a.tokenizer, a.no_ema)
        ctx = lm_eval.context_length(model)
        metrics = {}
        if a.tokens:
            from jaxmodels.data.sources import read_token_file
            if os.path.isdir(a.tokens):
                from jaxmodels.data.shards import read_shard_folder
                tokens = read_shard_folder(a.tokens)["val"]
            else:
                tokens = read_token_file(a.tokens)
            r = lm_eval.perplexity(model, params, tokens, min(a.seq_len or ctx, ctx), a.batch_size, a.max_tokens)
            metrics.update(val_loss=r["loss"], ppl=r["ppl"], tokens=r["tokens"])
        if a.hellaswag:
            r = lm_eval.hellaswag(model, params, tokenizer, lm_eval.read_hellaswag(a.hellaswag), ctx, a.limit)
            metrics.update(hellaswag_acc=r["acc"], hellaswag_acc_norm=r["acc_norm"], hellaswag_examples=r["examples"])
    except (ConfigError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not a.json:
        for key, value in metrics.items():
            print(f"{key:>20}: {value:.4f}" if isinstance(value, float) else f"{key:>20}: {value}")
    print(json.dumps(metrics))
    return 0


if __name__ == "__main__":
    sys.exit(main())
