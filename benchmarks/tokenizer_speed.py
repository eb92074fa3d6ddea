"""One process, one thread: HF `tokenizers` (what launch.prepare runs) vs `tiktoken` (nanoGPT's
prepare.py) on the same GPT-2-format vocab and text, alternating A B A B.

    python benchmarks/tokenizer_speed.py VOCAB_DIR CORPUS.jsonl [MB]   # a venv with both libraries

VOCAB_DIR / CORPUS: as benchmarks/prepare_throughput.py builds them. Prints tokens/s of each.
"""
import json
import os
import statistics
import sys
import time

os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one thread, as in each launch.prepare worker
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def main():
    vocab_dir, corpus = sys.argv[1:3]
    mb = float(sys.argv[3]) if len(sys.argv) > 3 else 10
    docs, size = [], 0
    with open(corpus, encoding="utf-8") as f:
        for line in f:
            docs.append(json.loads(line)["text"])
            size += len(docs[-1])
            if size > mb * 2 ** 20:
                break
    from peer_nanogpt_prepare import encoding
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    hf = Tokenizer(models.BPE.from_file(os.path.join(vocab_dir, "vocab.json"), os.path.join(vocab_dir, "merges.txt")))
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    hf.decoder = decoders.ByteLevel()
    tk = encoding(vocab_dir)
    runs = {"tokenizers (HF)": [], "tiktoken": []}
    for _ in range(2):
        t0 = time.time()
        n = sum(len(e.ids) for e in hf.encode_batch(docs, add_special_tokens=False))
        runs["tokenizers (HF)"].append(n / (time.time() - t0))
        t0 = time.time()
        m = sum(len(x) for x in tk.encode_ordinary_batch(docs, num_threads=1))
        runs["tiktoken"].append(m / (time.time() - t0))
    print(json.dumps({"mb": size / 2 ** 20, "tokens": [n, m], "load": os.getloadavg(),
                      "median_tokens_per_s": {k: statistics.median(v) for k, v in runs.items()}}))


if __name__ == "__main__":
    main()
