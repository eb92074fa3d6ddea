"""One square matmul on 2 threads: XLA:CPU (this jax) against PyTorch (oneDNN), f32 and bf16.

    python -m benchmarks.gemm_side_by_side --torch-python <venv with torch>/bin/python [--n 2048]

f32 x f32 -> f32, and bf16 operands with f32 results (ours: a bf16 x bf16 -> f32 dot;
PyTorch: an f32 matmul under torch.backends.mkldnn.matmul.fp32_precision="bf16"). Best of
10 after 3 warm-up calls, GFLOP/s = 2 n^3 / time. The two sides alternate (ours, PyTorch, ...)
`--repeats` times.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

TORCH_CODE = r"""
import json, time, torch
torch.set_num_threads(2)
n = {n}
out = {{}}
for prec in ("none", "bf16"):
    torch.backends.mkldnn.matmul.fp32_precision = prec
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    ts = []
    for _ in range(10):
        t = time.perf_counter(); a @ b; ts.append(time.perf_counter() - t)
    out["f32" if prec == "none" else "bf16"] = 2 * n ** 3 / min(ts) / 1e9
print("RESULT", json.dumps(out))
"""


def ours(n: int) -> dict:
    import jax
    import jax.numpy as jnp

    out = {}
    for name, dtype in (("f32", jnp.float32), ("bf16", jnp.bfloat16)):
        a = jax.random.normal(jax.random.key(0), (n, n)).astype(dtype)
        b = jax.random.normal(jax.random.key(1), (n, n)).astype(dtype)
        f = jax.jit(lambda x, y: jax.lax.dot(x, y, preferred_element_type=jnp.float32))
        for _ in range(3):
            f(a, b).block_until_ready()
        ts = []
        for _ in range(10):
            t = time.perf_counter()
            f(a, b).block_until_ready()
            ts.append(time.perf_counter() - t)
        out[name] = 2 * n ** 3 / min(ts) / 1e9
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--torch-python", required=True)
    p.add_argument("--n", type=int, default=2048)
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()
    env = dict(os.environ, OMP_NUM_THREADS="2", MKL_NUM_THREADS="2")
    for _ in range(args.repeats):
        mine = ours(args.n)
        text = subprocess.run([args.torch_python, "-c", TORCH_CODE.format(n=args.n)], env=env,
                              capture_output=True, text=True, check=True).stdout
        theirs = json.loads(text.split("RESULT", 1)[1])
        for k in ("f32", "bf16"):
            print(f"{k}: XLA:CPU {mine[k]:.0f} GFLOP/s, PyTorch {theirs[k]:.0f} GFLOP/s, "
                  f"ratio {mine[k] / theirs[k]:.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
