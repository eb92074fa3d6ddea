"""BitNet b1.58 memory: training (launch.memory's estimate) and packed decoding, vs bf16.

    PYTHONPATH=. python benchmarks/bitnet_memory.py

Training rows compile configs/bitnet_b158.py's train step on abstract shapes (nothing is
allocated; XLA's memory analysis of the CPU compile, as `python -m launch.memory`).
Decode rows compile the packed model's one-token decode step and a 512-token prefill
(batch 1, bf16 compute, KV cache in bf16 at the model's full context) and read the same
analysis: packed parameters (uint8 ternary + f32 scales, f32 embedding/head/norms) + KV
cache + temporaries. "bf16 params" is the same model with every weight in bf16.
Writes benchmarks/results/bitnet_memory.{md,json}.
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import REPO_ROOT, machine, markdown_table, write_results  # noqa: E402

GiB = 2 ** 30
CONFIG = os.path.join(REPO_ROOT, "configs", "bitnet_b158.py")
TRAIN_ROWS = (
    ("350m", []),
    ("700m", ["model.size=700m"]),
    ("700m", ["model.size=700m", "train.batch_size=1", "train.micro_batches=1"]),
    ("3b", ["model.size=3b"]),
)
DECODE_SIZES = ("2b-4t", "3b")


def train_row(size: str, overrides: list[str]) -> dict:
    from jaxmodels.config import load_config
    from jaxmodels.train.memory import estimate

    cfg = load_config(CONFIG, overrides)
    r = estimate(cfg)
    return {"size": size, "overrides": " ".join(f"--config.{o}" for o in overrides) or "(defaults)",
            "batch": f"{cfg.train.batch_size} x {cfg.data.seq_len} in {cfg.train.micro_batches} micro",
            "params_gib": r.params / GiB, "optimizer_gib": r.optimizer / GiB, "temp_gib": r.temp / GiB,
            "total_gib": r.total / GiB, "fits_12": r.fits}


def decode_rows(size: str) -> list[dict]:
    import jax
    import jax.numpy as jnp

    from jaxmodels.models import build_model
    from jaxmodels.models.bitnet import num_params
    from jaxmodels.train.memory import tree_bytes

    model = build_model({"name": "bitnet", "size": size, "packed": True, "dtype": "bfloat16"})
    cfg = model.cfg
    params = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 1), jnp.int32))["params"]
    state = jax.eval_shape(lambda: model.init_decode_state(1, cfg.max_len, jnp.bfloat16))
    rows = []
    for name, length in (("decode step", 1), ("prefill 512", 512)):
        def step(p, s, t):
            return model.apply({"params": p}, t, decode_state=s, pos=jnp.int32(0))
        tokens = jax.ShapeDtypeStruct((1, length), jnp.int32)
        ma = jax.jit(step, donate_argnums=1).lower(params, state, tokens).compile().memory_analysis()
        total = (ma.argument_size_in_bytes + max(0, ma.output_size_in_bytes - ma.alias_size_in_bytes)
                 + ma.temp_size_in_bytes)
        rows.append({"size": size, "what": name, "context": cfg.max_len,
                     "n_params": num_params(cfg), "packed_params_gib": tree_bytes(params) / GiB,
                     "bf16_params_gib": 2 * num_params(cfg) / GiB, "kv_cache_gib": tree_bytes(state) / GiB,
                     "temp_gib": ma.temp_size_in_bytes / GiB, "total_gib": total / GiB})
        print(rows[-1], flush=True)
    return rows


def main() -> int:
    env = machine()
    decode = [r for size in DECODE_SIZES for r in decode_rows(size)]
    train = []
    for size, overrides in TRAIN_ROWS:
        train.append(train_row(size, overrides))
        print(train[-1], flush=True)
    f = lambda x: f"{x:.2f}"  # noqa: E731
    md = ("Training (configs/bitnet_b158.py, bf16 compute, remat nothing_saveable, f32 latent weights + AdamW):\n\n"
          + markdown_table(["size", "overrides", "batch", "params GiB", "Adam GiB", "activations+temp GiB",
                            "total GiB", "fits 12 GB"],
                           [[r["size"], r["overrides"], r["batch"], f(r["params_gib"]), f(r["optimizer_gib"]),
                             f(r["temp_gib"]), f(r["total_gib"]), "yes" if r["fits_12"] else "no"] for r in train])
          + "\n\nPacked inference (batch 1, bf16 compute, bf16 KV cache at full context):\n\n"
          + markdown_table(["size", "step", "params", "packed params GiB", "bf16 params GiB", "KV cache GiB",
                            "temp GiB", "total GiB"],
                           [[r["size"], r["what"], f"{r['n_params'] / 1e9:.2f}B", f(r["packed_params_gib"]),
                             f(r["bf16_params_gib"]), f(r["kv_cache_gib"]), f(r["temp_gib"]), f(r["total_gib"])]
                            for r in decode])
          + f"\n\n{env['cpu']}, jax {env['jax']}, compiled for {env['backend']}, {env['date_utc']}\n")
    write_results("bitnet_memory", md, {"machine": env, "train": train, "decode": decode})
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
