"""nanoGPT's data/openwebtext/prepare.py recipe, pointed at a local JSONL (run in a venv with
tiktoken + datasets; called by benchmarks/prepare_throughput.py, not part of jaxmodels).

    python benchmarks/peer_nanogpt_prepare.py CORPUS.jsonl VOCAB_DIR OUT_DIR [num_proc]

Same steps as nanoGPT: datasets.load_dataset -> .map(process, num_proc) where process is
tiktoken's encode_ordinary + EOT appended -> concatenate into one uint16 train.bin through a
np.memmap, written in 1024 batches. The only change: the tiktoken Encoding is built from a
local GPT-2-format vocab.json (ranks = ids), as this machine cannot download the gpt2 file.
"""
import json
import os
import sys
import time

import numpy as np


def encoding(vocab_dir):
    import tiktoken
    with open(os.path.join(vocab_dir, "vocab.json"), encoding="utf-8") as f:
        vocab = json.load(f)
    # GPT-2's printable stand-ins for bytes -> the bytes themselves
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    decode = {chr(c): b for b, c in zip(bs, cs)}
    eot = vocab.pop("<|endoftext|>")
    ranks = {bytes(decode[ch] for ch in tok): i for tok, i in vocab.items()}
    pat = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
    return tiktoken.Encoding("local_gpt2", pat_str=pat, mergeable_ranks=ranks,
                             special_tokens={"<|endoftext|>": eot})


def main():
    corpus, vocab_dir, out = sys.argv[1:4]
    num_proc = int(sys.argv[4]) if len(sys.argv) > 4 else 2
    from datasets import load_dataset
    enc = encoding(vocab_dir)
    t0 = time.time()
    ds = load_dataset("json", data_files=corpus, split="train", cache_dir=os.path.join(out, "hf_cache"))

    def process(example):
        ids = enc.encode_ordinary(example["text"])
        ids.append(enc.eot_token)
        return {"ids": ids, "len": len(ids)}

    tokenized = ds.map(process, remove_columns=["text"], desc="tokenizing", num_proc=num_proc)
    arr_len = np.sum(tokenized["len"], dtype=np.uint64)
    filename = os.path.join(out, "train.bin")
    arr = np.memmap(filename, dtype=np.uint16, mode="w+", shape=(arr_len,))
    total_batches = min(1024, len(tokenized))
    idx = 0
    for batch_idx in range(total_batches):
        batch = tokenized.shard(num_shards=total_batches, index=batch_idx, contiguous=True).with_format("numpy")
        arr_batch = np.concatenate(batch["ids"])
        arr[idx: idx + len(arr_batch)] = arr_batch
        idx += len(arr_batch)
    arr.flush()
    print(json.dumps({"tokens": int(arr_len), "seconds": time.time() - t0}))


if __name__ == "__main__":
    main()
