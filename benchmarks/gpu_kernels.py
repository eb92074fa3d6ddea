"""One GPU check of every Pallas kernel: compile for real, compare with the reference, time
against XLA (and attention against cuDNN and tokamax), then the GPT-2 124M bf16 train step
with the kernels on and off. Built to finish in under 5 minutes on one GPU.

    python -m benchmarks.gpu_kernels                    # on a GPU (Triton lowering)
    python -m benchmarks.gpu_kernels --cpu-dry-run      # tiny shapes, Pallas interpret mode:
                                                        # checks the script itself anywhere
    python -m benchmarks.gpu_kernels --budget-s 240     # stop starting new rows after 240 s

Every row times forward + backward (jax.value_and_grad of sum(out * g), jitted; median of
`--iters` calls after one compile call) and checks output and gradients against the
reference: "max err" is the largest absolute difference over out and all gradients,
divided by the largest reference magnitude. Rows that do not compile or run are recorded
with their error, not dropped. A row that would start after --budget-s is recorded as
skipped, so the script always finishes.
Writes benchmarks/results/gpu_kernels.{md,json} (gpu_kernels_cpu_dry_run.* for the dry run).
"""
from __future__ import annotations

import argparse
import functools
import statistics
import time
import traceback

import jax
import jax.numpy as jnp

from benchmarks.common import machine, markdown_table, write_results
from jaxmodels.kernels import attention as attn
from jaxmodels.kernels import cross_entropy as ce
from jaxmodels.kernels import nf4_matmul as nf4
from jaxmodels.kernels import norms
from jaxmodels.kernels import rwkv7 as wkv
from jaxmodels.kernels import selective_scan as ss
from jaxmodels.layers import quant

T0 = time.perf_counter()


def timed(fn, args, iters):
    """(median seconds of fn(*args) after one compile call, result of the compile call)."""
    out = jax.block_until_ready(fn(*args))
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def fwd_bwd(f, n_diff):
    """jit(value_and_grad) of sum(f(*args) * g) over the first n_diff args; f may return a tuple."""
    def loss(*args_and_g):
        *args, g = args_and_g
        out = f(*args)
        outs = out if isinstance(out, tuple) else (out,)
        return sum(jnp.sum(o.astype(jnp.float32) * gg) for o, gg in zip(outs, g)), outs
    grad = jax.value_and_grad(loss, argnums=tuple(range(n_diff)), has_aux=True)

    def outs_and_grads(*args):
        (_, outs), grads = grad(*args)
        return outs, grads
    return jax.jit(outs_and_grads)


def rel_err(got, want) -> float:
    got = jax.tree.leaves(got)
    want = jax.tree.leaves(want)
    num = max(float(jnp.max(jnp.abs(a.astype(jnp.float32) - b.astype(jnp.float32)))) for a, b in zip(got, want))
    den = max(float(jnp.max(jnp.abs(b.astype(jnp.float32)))) for b in want)
    return num / max(den, 1e-30)


# ----------------------------------------------------------------------------- cases
def attention_cases(dry, interpret):
    lengths = [64] if dry else [1024, 2048, 4096, 8192]
    B, H, K, D = (1, 2, 1, 16) if dry else (4, 12, 12, 64)
    dtype = jnp.float32 if dry else jnp.bfloat16
    for T in lengths:
        b = max(1, B * 1024 // T) if not dry else B
        k = jax.random.split(jax.random.key(T), 4)
        q = jax.random.normal(k[0], (b, T, H, D), dtype)
        kk = jax.random.normal(k[1], (b, T, K, D), dtype)
        v = jax.random.normal(k[2], (b, T, K, D), dtype)
        g = (jax.random.normal(k[3], (b, T, H, D), jnp.float32),)
        impls = {
            "pallas": functools.partial(attn.flash_attention, causal=True, interpret=interpret,
                                        block_q=16 if dry else 64, block_k=16 if dry else 64),
            "xla (einsum)": functools.partial(attn.attention_xla, causal=True),
        }
        if not dry:
            impls["cudnn"] = lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=True,
                                                                         implementation="cudnn")
            impls["xla (jax.nn)"] = lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=True,
                                                                                implementation="xla")
            try:
                import tokamax  # optional
                impls["tokamax"] = lambda q, k, v: tokamax.dot_product_attention(q, k, v, is_causal=True)
            except ImportError:
                pass
        # Causal: half of the 2 x 2·b·H·T²·D forward matmul FLOPs; the backward has 5 matmuls
        # to the forward's 2, so fwd + bwd = 3.5 x forward (the FlashAttention papers' count).
        flops = 3.5 * 2 * b * H * T * T * D
        yield dict(op="flash attention", shape=f"B={b} T={T} H={H} D={D} causal {jnp.dtype(dtype).name}",
                   args=(q, kk, v), g=g, n_diff=3, impls=impls, reference="xla (einsum)", flops=flops)


def other_cases(dry, interpret):
    key = jax.random.split(jax.random.key(7), 8)
    # Fused cross-entropy: GPT-2 head at micro-batch 8 x 1024.
    N, C, V = (64, 32, 500) if dry else (8192, 768, 50304)
    dtype = jnp.float32 if dry else jnp.bfloat16
    h = jax.random.normal(key[0], (N, C))
    w = 0.02 * jax.random.normal(key[1], (V, C))
    t = jax.random.randint(key[2], (N,), 0, V)
    first = lambda f: (lambda h, w: f(h, w, t, dtype=dtype)[0])
    yield dict(op="cross-entropy", shape=f"N={N} C={C} V={V} {jnp.dtype(dtype).name}", args=(h, w),
               g=(jnp.ones((N,)) / N,), n_diff=2, reference="dense",
               impls={"pallas": first(functools.partial(ce.cross_entropy_pallas, interpret=interpret,
                                                        **({"block_n": 16, "block_v": 64} if dry else {}))),
                      "xla (chunked)": first(ce.cross_entropy_chunked),
                      "dense": first(ce.cross_entropy_dense)},
               flops=2 * N * C * V * 3)
    # Fused LayerNorm + adaLN modulate (DiT-B/2 block shape).
    B, T, C = (2, 16, 32) if dry else (64, 256, 768)
    x = jax.random.normal(key[3], (B, T, C), dtype)
    sh, sc = 0.1 * jax.random.normal(key[4], (B, C)), 0.1 * jax.random.normal(key[5], (B, C))
    yield dict(op="layernorm + modulate", shape=f"B={B} T={T} C={C} {jnp.dtype(dtype).name}",
               args=(x, sh, sc), g=(jnp.ones((B, T, C)),), n_diff=3, reference="xla",
               impls={"pallas": lambda x, sh, sc: norms.norm_pallas(x, kind="layer", eps=1e-6, shift_BC=sh,
                                                                    scale_BC=sc, interpret=interpret),
                      "xla": lambda x, sh, sc: norms.norm_xla(x, kind="layer", eps=1e-6, shift_BC=sh, scale_BC=sc)},
               flops=None)
    xr = x.reshape(1, B * T, C)
    wr = jnp.ones((C,))
    yield dict(op="rmsnorm", shape=f"N={B * T} C={C} {jnp.dtype(dtype).name}", args=(xr, wr),
               g=(jnp.ones(xr.shape),), n_diff=2, reference="xla",
               impls={"pallas": lambda x, w: norms.norm_pallas(x, w, kind="rms", interpret=interpret),
                      "xla": lambda x, w: norms.norm_xla(x, w, kind="rms")}, flops=None)
    # Mamba selective scan (Mamba-130M mixer: E=1536, N=16).
    B, T, E, N = (1, 12, 8, 4) if dry else (4, 1024, 1536, 16)
    k = jax.random.split(key[6], 6)
    sargs = (jax.random.normal(k[0], (B, T, E)), jax.nn.softplus(jax.random.normal(k[1], (B, T, E)) - 2),
             -jnp.exp(jax.random.normal(k[2], (E, N))), jax.random.normal(k[3], (B, T, N)),
             jax.random.normal(k[4], (B, T, N)), jnp.zeros((B, E, N)))
    yield dict(op="selective scan", shape=f"B={B} T={T} E={E} N={N} f32", args=sargs,
               g=(jnp.ones((B, T, E)), jnp.ones((B, E, N))), n_diff=6, reference="xla (sequential)",
               impls={"pallas": functools.partial(ss.selective_scan_pallas, interpret=interpret,
                                                  **({"chunk": 4, "block_e": 4} if dry else {})),
                      "xla (sequential)": functools.partial(ss.selective_scan_xla, mode="sequential"),
                      "xla (chunked)": functools.partial(ss.selective_scan_xla, mode="chunked")}, flops=None)
    # RWKV-7 WKV (L12-D768: 12 heads of 64).
    B, H, T, Nh = (1, 1, 10, 8) if dry else (4, 12, 1024, 64)
    k = jax.random.split(key[7], 7)
    kk = jax.random.normal(k[0], (B, H, T, Nh))
    kk = kk / jnp.linalg.norm(kk, axis=-1, keepdims=True)
    a = jax.nn.sigmoid(jax.random.normal(k[1], (B, H, T, Nh)))
    wargs = (jax.random.normal(k[2], (B, H, T, Nh)), jnp.exp(-jnp.exp(jax.random.normal(k[3], (B, H, T, Nh)) - 1)),
             jax.random.normal(k[4], (B, H, T, Nh)), jax.random.normal(k[5], (B, H, T, Nh)), -kk, kk * a,
             jnp.zeros((B, H, Nh, Nh)))
    yield dict(op="rwkv-7 wkv", shape=f"B={B} H={H} T={T} N={Nh} f32", args=wargs,
               g=(jnp.ones((B, H, T, Nh)), jnp.ones((B, H, Nh, Nh))), n_diff=7, reference="xla (recurrent)",
               impls={"pallas": functools.partial(wkv.wkv7_pallas, interpret=interpret, **({"chunk": 4} if dry else {})),
                      "xla (recurrent)": functools.partial(wkv.wkv7_xla, recurrent=True),
                      "xla (chunked 16)": functools.partial(wkv.wkv7_xla, chunk=16)}, flops=None)
    # NF4 dequantise-matmul (Llama-2-7B MLP up-projection, 2 x 512 tokens).
    M, K_in, N_out = (20, 64, 128) if dry else (1024, 4096, 11008)
    q = quant.nf4_quantize(0.02 * jax.random.normal(key[0], (K_in, N_out)))
    x = jax.random.normal(key[1], (M, K_in), dtype)
    yield dict(op="nf4 matmul", shape=f"M={M} in={K_in} out={N_out} {jnp.dtype(dtype).name}", args=(x,),
               g=(jnp.ones((M, N_out)),), n_diff=1, reference="xla",
               impls={"pallas": lambda x: nf4.nf4_matmul_pallas(x, q, (K_in, N_out), dtype, interpret=interpret,
                                                                **({"block_m": 16, "block_n": 64, "block_k": 32} if dry else {})),
                      "xla": lambda x: nf4.nf4_matmul_xla(x, q, (K_in, N_out), dtype)},
               flops=2 * M * K_in * N_out * 2)


def run_case(case, iters, budget_s):
    rows = []
    ref_out = None
    names = [case["reference"]] + [n for n in case["impls"] if n != case["reference"]]
    for name in names:
        row = dict(op=case["op"], shape=case["shape"], impl=name)
        if time.perf_counter() - T0 > budget_s:
            rows.append(dict(row, status="skipped (time budget)"))
            continue
        try:
            fn = fwd_bwd(case["impls"][name], case["n_diff"])
            sec, out = timed(fn, case["args"] + (case["g"],), iters)
            row.update(ms=sec * 1e3, status="ok")
            if case["flops"]:
                row["tflops"] = case["flops"] / sec / 1e12
            if name == case["reference"]:
                ref_out = out
            elif ref_out is not None:
                row["max_err"] = rel_err(out, ref_out)
        except Exception as e:  # a kernel that does not lower is a result too
            row.update(status=f"error: {type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}")
            traceback.print_exc()
        rows.append(row)
    ref_ms = next((r.get("ms") for r in rows if r["impl"] == case["reference"]), None)
    for r in rows:
        if ref_ms and r.get("ms"):
            r["speedup_vs_ref"] = ref_ms / r["ms"]
    return rows


def train_step_rows(dry, budget_s, steps):
    """GPT-2 124M bf16 train step, kernels on (all Pallas) vs off (XLA / cuDNN defaults)."""
    from jaxmodels.config import load_config
    from jaxmodels.train.bench import benchmark

    if dry:
        base = ["model.n_layer=1", "model.n_embd=32", "model.n_head=2", "model.vocab_size=256",
                "model.block_size=32", "data.seq_len=32", "model.dtype=float32"]
        spec, batch = "configs/gpt2_124m.py:smoke", 2
    else:
        base, spec, batch = [], "configs/gpt2_124m.py", 16
    settings = {
        "kernels off (cuDNN attention, chunked XLA loss, XLA norms)": ["kernels.attention=xla", "kernels.cross_entropy=xla",
                                                                     "kernels.norm=xla"],
        "kernels on (Pallas attention, loss, norms)": ["kernels.attention=pallas", "kernels.cross_entropy=pallas",
                                                      "kernels.norm=pallas"],
    }
    rows = []
    for label, kernels in settings.items():
        row = dict(op="GPT-2 124M train step" if not dry else "tiny GPT train step (dry run)", impl=label,
                   shape=f"batch {batch} x {32 if dry else 1024}, one micro-batch")
        if time.perf_counter() - T0 > budget_s:
            rows.append(dict(row, status="skipped (time budget)"))
            continue
        try:
            cfg = load_config(spec, base + kernels + [f"train.batch_size={batch}", "train.micro_batches=1",
                                                      "memory.check=False"])
            r = benchmark(cfg, steps=steps, warmup=2)
            row.update(status="ok", ms=r["median_step_s"] * 1e3, tokens_per_s=r["tokens_per_s"],
                       mfu=r["mfu"], compile_s=r["compile_s"])
        except Exception as e:
            row.update(status=f"error: {type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}")
            traceback.print_exc()
        rows.append(row)
    return rows


def fmt(x, spec):
    return "" if x is None else format(x, spec)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu-dry-run", action="store_true", help="tiny shapes, Pallas interpret mode")
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--train-steps", type=int, default=10)
    parser.add_argument("--budget-s", type=float, default=240.0,
                        help="start no new row after this many seconds (keeps the run under 5 min)")
    args = parser.parse_args(argv)
    dry = args.cpu_dry_run
    on_gpu = jax.default_backend() == "gpu"
    if not dry and not on_gpu:
        raise SystemExit("benchmarks.gpu_kernels needs a GPU; use --cpu-dry-run to check the script here")
    interpret = dry or not on_gpu
    iters = 2 if dry else args.iters
    rows = []
    for case in list(attention_cases(dry, interpret)) + list(other_cases(dry, interpret)):
        rows += run_case(case, iters, args.budget_s)
        print(f"[{time.perf_counter() - T0:6.1f}s] {case['op']} {case['shape']}", flush=True)
    rows += train_step_rows(dry, args.budget_s, 2 if dry else args.train_steps)
    info = machine()
    info["device"] = str(jax.devices()[0].device_kind)
    info["total_s"] = round(time.perf_counter() - T0, 1)
    table = markdown_table(
        ["op", "shape", "impl", "fwd+bwd ms", "vs reference", "max err", "TFLOP/s", "tokens/s", "MFU", "status"],
        [[r["op"], r["shape"], r["impl"], fmt(r.get("ms"), ".3f"), fmt(r.get("speedup_vs_ref"), ".2f") + ("x" if r.get("speedup_vs_ref") else ""),
          fmt(r.get("max_err"), ".1e"), fmt(r.get("tflops"), ".1f"), fmt(r.get("tokens_per_s"), ",.0f"),
          fmt(None if r.get("mfu") is None else 100 * r["mfu"], ".1f") + ("%" if r.get("mfu") is not None else ""),
          r["status"]] for r in rows])
    mode = "CPU dry run (tiny shapes, Pallas interpret mode: timings mean nothing)" if dry else "GPU"
    md = (f"{mode}: {info['device']}, jax {info['jax']}, {info['date_utc']}, total {info['total_s']} s.\n\n"
          f"{table}\n")
    print(md)
    write_results("gpu_kernels_cpu_dry_run" if dry else "gpu_kernels", md, {"machine": info, "rows": rows})


if __name__ == "__main__":
    main()
