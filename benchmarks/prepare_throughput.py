"""launch.prepare vs nanoGPT's OpenWebText prepare.py recipe (tiktoken + datasets map), side by side.

    python benchmarks/prepare_throughput.py --peer_python /path/to/venv-with-tiktoken-datasets/bin/python \
        [--mb 100] [--repeats 2] [--rss_gb 1.0] [--workers 2]

1. Builds a local corpus of --mb MB as JSONL (one document per Python standard-library source
   file, then tiny Shakespeare, repeated until the size is reached) and a GPT-2-format
   byte-level BPE (vocab 16,384, trained on the corpus's first 20 MB with GPT-2's
   pre-tokenizer): this machine cannot download GPT-2's own vocab, and both sides use this one.
2. Alternates A B A B: `python -m launch.prepare corpus.jsonl --tokenizer gpt2 --format nanogpt
   --workers W` and benchmarks/peer_nanogpt_prepare.py (datasets .map with num_proc=W).
   Wall time of the whole command (process start to exit) and peak RSS summed over the
   process tree (sampled from /proc every 0.1 s). Checks both wrote the same number of tokens,
   and that launch.prepare's gpt2 tokenizer (tiktoken here) gives the `tokenizers` backend's ids.
3. launch.prepare's peak RSS at --mb and at --rss_gb GB (the corpus concatenated with itself)
   to show memory does not grow with the input.
Writes benchmarks/results/prepare_throughput.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import sysconfig
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "results")


def build_corpus(path: str, mb: int) -> None:
    if os.path.isfile(path) and os.path.getsize(path) >= mb * 2 ** 20 * 0.99:
        return
    stdlib = sysconfig.get_paths()["stdlib"]
    files = sorted(os.path.join(r, f) for r, _, fs in os.walk(stdlib) for f in fs if f.endswith(".py"))
    files.append(os.path.join(ROOT, "jaxmodels", "data", "corpora", "tinyshakespeare.txt"))
    target, size = mb * 2 ** 20, 0
    with open(path + ".tmp", "w", encoding="utf-8") as out:
        while size < target:
            for p in files:
                try:
                    text = open(p, encoding="utf-8").read()
                except (UnicodeDecodeError, OSError):
                    continue
                line = json.dumps({"text": text}, ensure_ascii=False) + "\n"
                out.write(line)
                size += len(line.encode("utf-8"))
                if size >= target:
                    break
    os.replace(path + ".tmp", path)


def build_vocab(corpus: str, folder: str) -> None:
    if os.path.isfile(os.path.join(folder, "merges.txt")):
        return
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    os.makedirs(folder, exist_ok=True)
    sample = os.path.join(folder, "sample.txt")
    with open(corpus, encoding="utf-8") as f, open(sample, "w", encoding="utf-8") as g:
        n = 0
        for line in f:
            g.write(json.loads(line)["text"])
            n += len(line)
            if n > 20 * 2 ** 20:
                break
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train([sample], trainers.BpeTrainer(vocab_size=16384, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                            special_tokens=[]))
    tok.model.save(folder)
    with open(os.path.join(folder, "vocab.json"), encoding="utf-8") as f:
        vocab = json.load(f)
    vocab["<|endoftext|>"] = len(vocab)  # after the merges, like GPT-2's 50256
    with open(os.path.join(folder, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False)
    os.remove(sample)


def same_ids(corpus: str, vocab: str, mb: float = 5.0) -> dict:
    """launch.prepare's gpt2 tokenizer (tiktoken when it can) vs the `tokenizers` backend, id
    for id, on the corpus's first `mb` MB."""
    sys.path.insert(0, ROOT)
    from jaxmodels.data.tokenizers import gpt2_tokenizer
    fast, ref = gpt2_tokenizer(vocab), gpt2_tokenizer(vocab, "tokenizers")
    texts, n = [], 0
    with open(corpus, encoding="utf-8") as f:
        for line in f:
            texts.append(json.loads(line)["text"])
            n += len(line)
            if n > mb * 2 ** 20:
                break
    a, b = fast.encode_batch(texts), ref.encode_batch(texts)
    return {"backend": type(fast).__name__, "documents": len(texts), "mb": n / 2 ** 20,
            "tokens": sum(map(len, b)), "equal": a == b}


def tree_rss(pid: int) -> int:
    """Resident bytes of pid and all its descendants."""
    children = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(d))
            except (OSError, IndexError, ValueError):
                pass
    total, stack = 0, [pid]
    while stack:
        p = stack.pop()
        try:
            with open(f"/proc/{p}/statm") as f:
                total += int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:
            pass
        stack += children.get(p, [])
    return total


def run(cmd: list, env=None) -> dict:
    t0 = time.time()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    peak = 0
    while proc.poll() is None:
        peak = max(peak, tree_rss(proc.pid))
        time.sleep(0.1)
    out = proc.stdout.read()
    if proc.returncode:
        raise RuntimeError(f"{cmd[:4]} failed ({proc.returncode}): {out[-500:]}")
    return {"seconds": time.time() - t0, "peak_rss_mb": peak / 2 ** 20, "stdout": out.strip().splitlines()[-1]}


def ours(corpus: str, vocab: str, out: str, workers: int, tokenizer: str = "gpt2") -> dict:
    subprocess.run(["rm", "-rf", out])
    env = dict(os.environ, PYTHONPATH=ROOT)
    r = run([sys.executable, "-m", "launch.prepare", corpus, "--out", out, "--tokenizer", tokenizer,
             "--vocab_path", vocab if tokenizer == "gpt2" else "", "--format", "nanogpt", "--workers", str(workers), "--no_progress",
             "--shard_tokens", "100000000"], env)
    with open(os.path.join(out, "manifest.json")) as f:
        r["tokens"] = json.load(f)["num_tokens"]
    return r


def peer(python: str, corpus: str, vocab: str, out: str, workers: int) -> dict:
    subprocess.run(["rm", "-rf", out])
    os.makedirs(out)
    r = run([python, os.path.join(ROOT, "benchmarks", "peer_nanogpt_prepare.py"), corpus, vocab, out, str(workers)])
    r["tokens"] = json.loads(r["stdout"])["tokens"]
    return r


def rss_only(a) -> None:
    """launch.prepare's peak RSS (process tree) and time at several input sizes."""
    os.makedirs(a.work, exist_ok=True)
    vocab = os.path.join(a.work, "vocab16k")
    out = []
    sizes = [int(x) for x in a.rss_only.split(",")]
    base = os.path.join(a.work, f"corpus_{min(sizes)}mb.jsonl")
    build_corpus(base, min(sizes))
    for mb in sizes:
        corpus = os.path.join(a.work, f"corpus_{mb}mb.jsonl")
        repeated(base, corpus, mb / 1024)  # larger inputs: the smallest one, repeated
        if a.rss_tokenizer == "gpt2":
            build_vocab(base, vocab)
        r = ours(corpus, vocab, os.path.join(a.work, f"ours_{mb}"), a.workers, a.rss_tokenizer)
        subprocess.run(["rm", "-rf", os.path.join(a.work, f"ours_{mb}")])
        r.update(input_mb=os.path.getsize(corpus) / 2 ** 20, load=os.getloadavg(), tokenizer=a.rss_tokenizer)
        out.append(r)
        print(json.dumps(r), flush=True)
    with open(os.path.join(RESULTS, f"prepare_rss_{a.rss_tokenizer}.json"), "w") as f:
        json.dump(out, f, indent=1)


def repeated(corpus: str, path: str, gb: float) -> None:
    """`corpus` concatenated with itself to at least `gb` GiB (nothing to do if that exists)."""
    if os.path.isfile(path):
        return
    with open(path + ".tmp", "wb") as out:
        while out.tell() < gb * 2 ** 30:
            with open(corpus, "rb") as f:
                out.write(f.read())
    os.replace(path + ".tmp", path)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--peer_python", default="")
    p.add_argument("--work", default="/tmp/jaxmodels_prepare_bench")
    p.add_argument("--mb", type=int, default=100)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--rss_gb", type=float, default=1.0, help="0: skip the large-input RSS run")
    p.add_argument("--rss_only", default="", help="e.g. 100,1024: only launch.prepare's peak RSS at these MB "
                                                  "(-> results/prepare_rss_<tokenizer>.json; larger sizes repeat the smallest corpus)")
    p.add_argument("--rss_tokenizer", default="gpt2", help="--rss_only: gpt2 (the 16k vocab) or byte (no BPE: "
                                                           "the pipeline's own memory, ~10x faster)")
    a = p.parse_args()
    if a.rss_only:
        return rss_only(a)
    if not a.peer_python:
        p.error("--peer_python is required (a Python with tiktoken + datasets) unless --rss_only")
    os.makedirs(a.work, exist_ok=True)
    corpus = os.path.join(a.work, f"corpus_{a.mb}mb.jsonl")
    vocab = os.path.join(a.work, "vocab16k")
    build_corpus(corpus, a.mb)
    build_vocab(corpus, vocab)
    check = same_ids(corpus, vocab)
    print(json.dumps(check), flush=True)
    load_before = os.getloadavg()
    rows = {"launch.prepare": [], "nanoGPT recipe": []}
    for _ in range(a.repeats):
        rows["launch.prepare"].append(ours(corpus, vocab, os.path.join(a.work, "ours"), a.workers))
        rows["nanoGPT recipe"].append(peer(a.peer_python, corpus, vocab, os.path.join(a.work, "peer"), a.workers))
        print(json.dumps({k: v[-1] for k, v in rows.items()}), flush=True)
    big = None
    if a.rss_gb:
        big_corpus = os.path.join(a.work, f"corpus_{a.rss_gb:g}gb.jsonl")
        repeated(corpus, big_corpus, a.rss_gb)
        big = ours(big_corpus, vocab, os.path.join(a.work, "ours_big"), a.workers)
        big["input_mb"] = os.path.getsize(big_corpus) / 2 ** 20
        subprocess.run(["rm", "-rf", os.path.join(a.work, "ours_big")])
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
    summary = {
        "input_mb": os.path.getsize(corpus) / 2 ** 20, "workers": a.workers, "cpu": cpu, "cores": os.cpu_count(),
        "load_before": load_before, "load_after": os.getloadavg(), "runs": rows, "rss_big_input": big,
        "median_tokens_per_s": {k: statistics.median(r["tokens"] / r["seconds"] for r in v) for k, v in rows.items()},
        "same_token_count": len({r["tokens"] for v in rows.values() for r in v}) == 1,
        "ids_vs_tokenizers_backend": check,
    }
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, "prepare_throughput.json"), "w") as f:
        json.dump(summary, f, indent=1)
    med = summary["median_tokens_per_s"]
    lines = [f"input {summary['input_mb']:.0f} MB JSONL, {a.workers} worker processes each, {cpu} ({os.cpu_count()} cores), "
             f"load average {load_before[0]:.1f} before / {summary['load_after'][0]:.1f} after; "
             f"same token count both sides: {summary['same_token_count']}; launch.prepare's gpt2 tokenizer ran on "
             f"{check['backend']}, ids equal to the `tokenizers` backend's on the first {check['mb']:.1f} MB "
             f"({check['tokens']:,} tokens): {check['equal']}", "",
             "| command | runs (s) | median tokens/s | peak RSS (MB, process tree) |", "|---|---|---|---|"]
    for k, v in rows.items():
        times = ", ".join(f"{r['seconds']:.1f}" for r in v)
        lines.append(f"| {k} | {times} | {med[k]:,.0f} | "
                     f"{max(r['peak_rss_mb'] for r in v):,.0f} |")
    lines.append("")
    lines.append(f"ratio launch.prepare / nanoGPT recipe (median tokens/s): {med['launch.prepare'] / med['nanoGPT recipe']:.2f}")
    if big:
        lines.append(f"launch.prepare peak RSS: {max(r['peak_rss_mb'] for r in rows['launch.prepare']):,.0f} MB at "
                     f"{summary['input_mb']:.0f} MB input, {big['peak_rss_mb']:,.0f} MB at {big['input_mb']:,.0f} MB input "
                     f"({big['seconds']:.0f} s)")
    with open(os.path.join(RESULTS, "prepare_throughput.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
