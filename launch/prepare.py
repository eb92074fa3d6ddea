"""Tokenizes text into token shards for `--config.data.source=tokens` (nanoGPT's / llm.c's prepare).

    python -m launch.prepare corpus.txt more_texts/ --out data/owt --tokenizer gpt2 --vocab_path data/gpt2
    python -m launch.prepare docs.jsonl --text_key text --out data/x --tokenizer hf --vocab_path path/to/model
    python -m launch.prepare --hf_dataset path/to/saved_dataset --out data/x --tokenizer sentencepiece \
        --vocab_path path/to/llama2
    python -m launch.prepare --tfds my_text --tfds_data_dir ~/tensorflow_datasets --out data/x \
        --tokenizer tiktoken --vocab_path cl100k_base
    # then: python -m launch.train --config configs/gpt2_124m.py \
    #           --config.data.source=tokens --config.data.path=data/owt

Writes <out>/<prefix>_val_000000.bin, <prefix>_train_000001.bin, ... (llm.c's header format,
or --format nanogpt for bare uint16) and <out>/manifest.json. Streamed in constant memory,
one tokenizer process per core; rerunning the same command after an interruption continues
where the last complete shard ended and gives the same shards.
"""
from __future__ import annotations

import argparse
import os
import sys


def main(argv=None) -> int:
    from jaxmodels.data.prepare import PrepareSpec, prepare
    from jaxmodels.data.tokenizers import TOKENIZERS

    d = PrepareSpec(inputs=[], out_dir="")
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="*", help="text / .jsonl files or folders of them")
    p.add_argument("--out", required=True, help="output folder (shards + manifest.json)")
    p.add_argument("--tokenizer", default=d.tokenizer, choices=[t for t in TOKENIZERS if t != "char"])
    p.add_argument("--vocab_path", default="", help="gpt2: vocab.json + merges.txt folder; hf: tokenizer.json; "
                                                    "sentencepiece: tokenizer.model (file or folder); tiktoken: an encoding "
                                                    "name (cl100k_base, o200k_base, gpt2)")
    p.add_argument("--hf_dataset", default="", help="a Hugging Face dataset: save_to_disk folder, data folder, "
                                                    "or hub name (online)")
    p.add_argument("--tfds", default="", help="a tfds dataset name, prepared for random access (array_record); "
                                              "never downloads")
    p.add_argument("--tfds_data_dir", default="", help="--tfds data_dir (default: tfds's)")
    p.add_argument("--split", default=d.hf_split, help="--hf_dataset / --tfds split")
    p.add_argument("--text_key", default=d.text_key, help="field holding the text (.jsonl, --hf_dataset, --tfds)")
    p.add_argument("--format", default=d.fmt, choices=["llmc", "nanogpt"])
    p.add_argument("--prefix", default=d.prefix, help="shard name prefix")
    p.add_argument("--shard_tokens", type=int, default=d.shard_tokens)
    p.add_argument("--val_tokens", type=int, default=d.val_tokens,
                   help="tokens of the first (val) shard; 0: --shard_tokens")
    p.add_argument("--chunk_bytes", type=int, default=d.chunk_bytes, help="text per unit of work")
    p.add_argument("--workers", type=int, default=d.workers, help="tokenizer processes")
    p.add_argument("--no_progress", action="store_true")
    a = p.parse_args(argv)
    spec = PrepareSpec(inputs=a.inputs, out_dir=a.out, tokenizer=a.tokenizer, vocab_path=a.vocab_path,
                       hf_dataset=a.hf_dataset, hf_split=a.split, tfds=a.tfds, tfds_data_dir=a.tfds_data_dir, text_key=a.text_key, fmt=a.format,
                       prefix=a.prefix, shard_tokens=a.shard_tokens, val_tokens=a.val_tokens,
                       chunk_bytes=a.chunk_bytes, workers=max(1, a.workers), progress=not a.no_progress)
    from jaxmodels.config import ConfigError
    try:
        m = prepare(spec)
    except (ConfigError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{m['num_tokens']:,} tokens in {len(m['shards'])} shard(s) in {os.path.abspath(a.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
