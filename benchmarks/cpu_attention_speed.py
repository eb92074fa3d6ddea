"""Attention forward + backward on a CPU: the einsum path against the C++ kernel, alternating.

    python -m benchmarks.cpu_attention_speed [--rounds 10]

Shapes: DiT-S/2 at a micro-batch of 8 (8 x 256 tokens x 6 heads x 64, not causal) and nanoGPT
shakespeare_char at its batch (64 x 256 x 6 x 64, causal, with and without dropout 0.2), plus
the baby config (12 x 64 x 4 x 32, causal). Each row: both implementations compiled once
(the gradient of sum(sin(attention(q, k, v))) with respect to q, k, v), then timed in turns,
median ms. Results: benchmarks/results/cpu_attention_speed_<machine type>.{json,md}.
"""
from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.common import machine, machine_tag, markdown_table, write_results

ROWS = [  # name, B, T, H, D, causal, dropout
    ("DiT-S/2 micro-batch", 8, 256, 6, 64, False, 0.0),
    ("nanoGPT 6/6/384", 64, 256, 6, 64, True, 0.0),
    ("nanoGPT 6/6/384, dropout 0.2", 64, 256, 6, 64, True, 0.2),
    ("nanoGPT baby, dropout 0.2", 12, 64, 4, 32, True, 0.2),
]


def _step(impl: str, causal: bool, rate: float):
    from jaxmodels.kernels.cpu_attention import cpu_attention
    from jaxmodels.layers.attention import attention_einsum, attention_mask

    key = jax.random.key(0)

    def attn(q, k, v):
        if impl == "cpu":
            return cpu_attention(q, k, v, causal=causal, dropout_rate=rate, dropout_rng=key)
        mask = attention_mask(q.shape[1], k.shape[1], causal=causal)
        return attention_einsum(q, k, v, mask, dropout_rate=rate, dropout_rng=key)

    return jax.jit(jax.grad(lambda q, k, v: jnp.sum(jnp.sin(attn(q, k, v))), (0, 1, 2)))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=10)
    args = p.parse_args()
    from jaxmodels.kernels import cpu_ffi

    cpu_ffi.require("benchmarks.cpu_attention_speed")
    rows, report = [], {"machine": machine(), "rows": []}
    for name, B, T, H, D, causal, rate in ROWS:
        r = np.random.default_rng(0)
        q, k, v = (jnp.asarray(r.standard_normal((B, T, H, D)), jnp.float32) for _ in range(3))
        fns = {impl: _step(impl, causal, rate) for impl in ("einsum", "cpu")}
        times = {impl: [] for impl in fns}
        for fn in fns.values():
            jax.block_until_ready(fn(q, k, v))
        for _ in range(args.rounds):
            for impl, fn in fns.items():
                t0 = time.perf_counter()
                jax.block_until_ready(fn(q, k, v))
                times[impl].append(time.perf_counter() - t0)
        med = {impl: statistics.median(ts) * 1e3 for impl, ts in times.items()}
        flops = 2 * 2 * B * H * T * T * D * 3 / 1e9  # fwd (2 matmuls) + bwd (4), causal counted full
        report["rows"].append(dict(name=name, shape=[B, T, H, D], causal=causal, dropout=rate,
                                   einsum_ms=med["einsum"], cpu_ms=med["cpu"]))
        rows.append([f"{name} ({B}x{T}x{H}x{D}{', causal' if causal else ''})", f"{med['einsum']:.1f}",
                     f"{med['cpu']:.1f}", f"{med['cpu'] / med['einsum']:.2f}",
                     f"{flops / med['einsum'] * 1e3:.0f} / {flops / med['cpu'] * 1e3:.0f}"])
    table = markdown_table(["attention fwd + bwd", "einsum path, ms", "C++ kernel, ms", "ratio",
                            "GFLOP/s (einsum / kernel; causal counted full)"], rows)
    print(table)
    m = report["machine"]
    header = "".join(f"- {k}: {v}\n" for k, v in m.items()) + "\n"
    write_results(f"cpu_attention_speed_{machine_tag()}", header + table, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
