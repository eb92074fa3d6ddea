"""Chunked vs dense cross-entropy on CPU, side by side (alternating A B A B, medians).

    python -m benchmarks.cross_entropy_cpu              # ~5 min on 2 busy cores
    python -m benchmarks.cross_entropy_cpu --rounds 3

Two kinds of rows:
- "head": loss + gradients (hidden, weight) of the LM head alone at GPT-2's width and padded
  vocabulary (C=768, V=50304) for N tokens, jitted: kernels.cross_entropy's chunked form
  against the dense reference, f32 and bf16 matmuls.
- "train step": the whole jitted train step (jaxmodels.train.bench.benchmark) of a config with
  `kernels.cross_entropy` = xla (chunked, the default) vs dense.
Writes benchmarks/results/cross_entropy_cpu.{md,json}.
"""
from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp

from benchmarks.common import machine, markdown_table, write_results
from jaxmodels.kernels.cross_entropy import cross_entropy_chunked, cross_entropy_dense

TRAIN_ROWS = [
    ("gpt2_124m.py:smoke (width 32, vocab 256, 8x32 tokens)", "configs/gpt2_124m.py:smoke", []),
    ("gpt2_124m.py:smoke, width 128, vocab 50304, 8x64 tokens", "configs/gpt2_124m.py:smoke",
     ["model.n_embd=128", "model.vocab_size=50304", "model.block_size=64", "data.seq_len=64"]),
]


def time_call(fn, *args) -> float:
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return time.perf_counter() - t0


def head_rows(rounds: int, n_tokens: int) -> list[dict]:
    k = jax.random.split(jax.random.key(0), 3)
    C, V = 768, 50304
    h = jax.random.normal(k[0], (n_tokens, C))
    w = 0.02 * jax.random.normal(k[1], (V, C))
    t = jax.random.randint(k[2], (n_tokens,), 0, V)
    rows = []
    for dtype in (jnp.float32, jnp.bfloat16):
        fns = {}
        for name, f in (("dense", cross_entropy_dense), ("chunked", cross_entropy_chunked)):
            loss = lambda h, w, f=f: jnp.mean(f(h, w, t, dtype=dtype)[0])
            fns[name] = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
            time_call(fns[name], h, w)  # compile + warm-up
        times = {name: [] for name in fns}
        for _ in range(rounds):
            for name, fn in fns.items():  # alternating: dense, chunked, dense, chunked, ...
                times[name].append(time_call(fn, h, w))
        d, c = statistics.median(times["dense"]), statistics.median(times["chunked"])
        rows.append(dict(kind="head", what=f"N={n_tokens}, C={C}, V={V}, {jnp.dtype(dtype).name}",
                         dense_s=d, chunked_s=c, ratio=c / d, load=machine()["load_avg_1m"]))
    return rows


def train_rows(rounds: int, steps: int) -> list[dict]:
    from jaxmodels.config import load_config
    from jaxmodels.train.bench import benchmark

    rows = []
    for label, spec, overrides in TRAIN_ROWS:
        times = {"dense": [], "xla": []}
        for _ in range(rounds):
            for mode in times:
                cfg = load_config(spec, overrides + [f"kernels.cross_entropy={mode}"])
                times[mode].append(benchmark(cfg, steps=steps, warmup=2)["median_step_s"])
        d, c = statistics.median(times["dense"]), statistics.median(times["xla"])
        rows.append(dict(kind="train step", what=label, dense_s=d, chunked_s=c, ratio=c / d,
                         load=machine()["load_avg_1m"]))
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args(argv)
    info = machine()
    rows = head_rows(args.rounds, args.tokens) + train_rows(max(2, args.rounds // 2), args.steps)
    table = markdown_table(
        ["kind", "what", "dense s", "chunked s", "chunked / dense", "load avg"],
        [[r["kind"], r["what"], f"{r['dense_s']:.4f}", f"{r['chunked_s']:.4f}", f"{r['ratio']:.2f}", r["load"]]
         for r in rows])
    md = (f"Measured {info['date_utc']} on {info['cpu']} ({info['cores']} cores), jax {info['jax']}, "
          f"load average at start {info['load_avg_1m']}. Medians of {args.rounds} alternating rounds "
          f"(head) / {max(2, args.rounds // 2)} rounds of {args.steps} steps (train step).\n\n{table}\n")
    print(md)
    write_results("cross_entropy_cpu", md, {"machine": info, "rows": rows})


if __name__ == "__main__":
    main()
