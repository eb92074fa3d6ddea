"""Train-step tokens/s of the MoE dispatch paths on this machine, alternating A B C A B C.

    python benchmarks/moe_dispatch_speed.py [--repeats 3] [--steps 10]

configs/moe_gpt.py:cpu (8 experts, top-2) with dropless dispatch (grouped matmul; on CPU
the block-padded einsum, see jaxmodels.layers.moe.grouped_matmul), with capacity dispatch
(capacity_factor 1.25, one-hot einsums) and the dense twin (:dense_cpu, same active params),
each timed on real batches of the embedded corpus; medians over repeats and their ratios.
Writes benchmarks/results/moe_dispatch_speed.{md,json}.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import REPO_ROOT, machine, markdown_table, write_results  # noqa: E402

CASES = {
    "dropless": ("cpu", ["model.moe_dispatch=dropless"]),
    "capacity (cf 1.25)": ("cpu", ["model.moe_dispatch=capacity", "model.moe_capacity_factor=1.25"]),
    "dense twin": ("dense_cpu", []),
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args(argv)
    from jaxmodels.config import load_config
    from jaxmodels.train.bench import benchmark

    info = machine()
    rates = {name: [] for name in CASES}
    for _ in range(args.repeats):
        for name, (variant, overrides) in CASES.items():
            cfg = load_config(os.path.join(REPO_ROOT, "configs", "moe_gpt.py") + f":{variant}", overrides)
            rates[name].append(benchmark(cfg, steps=args.steps, warmup=2, real_data=True)["tokens_per_s"])
            print(name, f"{rates[name][-1]:,.0f} tokens/s", flush=True)
    load_after = machine()["load_avg_1m"]
    med = {k: statistics.median(v) for k, v in rates.items()}
    rows = [[k, f"{med[k]:,.0f}", f"{med[k] / med['dropless']:.2f}", " ".join(f"{r:,.0f}" for r in rates[k])]
            for k in CASES]
    md = (f"Measured {info['date_utc']} on {info['cpu']} ({info['cores']} cores), jax {info['jax']}; "
          f"load average {info['load_avg_1m']} before, {load_after} after (a shared machine: "
          f"compare the ratios, not the absolute numbers).\n\n"
          + markdown_table(["moe_gpt.py:cpu train step", "median tokens/s", "vs dropless", "per repeat"], rows))
    write_results("moe_dispatch_speed", md, {"machine": info, "load_after": load_after, "tokens_per_s": rates})
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
