"""Decode memory and speed against generated length: recurrent models vs GPT with a KV cache.

    python -m benchmarks.decode                      # lengths 128 ... 8192 (10-30 minutes)
    python -m benchmarks.decode --repeats 1          # one timed call per length (BENCHMARKS.md)
    python -m benchmarks.decode --lengths 128,256    # quick check

Four causal LMs of about the same size (~13M parameters without embeddings, byte vocab
256, f32, batch 1): GPT (KV cache), Mamba, RWKV-7 and RetNet (recurrent retention). Each
generates N tokens greedily from a 1-token prompt through `jaxmodels.generate`'s greedy
decoder (prefill + a jitted lax.scan of one-token steps, compiled ahead of time). For each N:
  state bytes      size of `model.init_decode_state(1, N)` from its shapes (exact);
  step temp        the compiled one-token decode step's memory_analysis().temp_size_in_bytes;
  tokens/s         N / wall time of the whole greedy call (median of up to --repeats calls,
                   max(1, --max-tokens // N) of them; compile excluded). GPT is timed
                   only up to --gpt-max-timed (4096): its decode is O(N^2) in total.
The recurrent states do not depend on N; GPT's cache grows linearly (its block_size is set
to the longest length). Writes benchmarks/results/decode.{md,json} and decode.png (when
matplotlib is installed).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

if __package__ in (None, ""):  # `python benchmarks/decode.py`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.common import RESULTS_DIR, machine, markdown_table, write_results

VOCAB = 256
DEFAULT_LENGTHS = (128, 256, 512, 1024, 2048, 4096, 8192)

# ~13M parameters each (embeddings excluded), width 512 where the family allows.
MODELS = {
    "Mamba": dict(name="mamba", d_model=512, n_layer=8, d_state=16, scan_mode="sequential"),
    "RWKV-7": dict(name="rwkv7", d_model=512, n_layer=4, head_size=64, wkv_mode="recurrent"),
    "RetNet (recurrent)": dict(name="retnet", d_model=512, n_layer=4, n_head=2, d_value=864, d_ffn=864,
                               retention_mode="recurrent"),
    "GPT (KV cache)": dict(name="gpt", n_layer=4, n_head=8, n_embd=512, bias=True, dropout=0.0),
}


def tree_bytes(tree) -> int:
    return int(sum(np.prod(x.shape) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree)))


def build(spec: dict, max_len: int):
    """(model, params, non-embedding parameter count) for one family, f32, byte vocab."""
    from jaxmodels.models import build_model

    spec = dict(spec, vocab_size=VOCAB, dtype="float32")
    if spec["name"] == "gpt":
        spec["block_size"] = max_len
    model = build_model(spec)
    params = model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]
    embed = sum(int(np.prod(x.shape)) for path, x in jax.tree_util.tree_leaves_with_path(params)
                if any(str(getattr(k, "key", "")) in ("wte", "wpe", "embed", "embedding", "emb", "head")
                       for k in path))
    return model, params, tree_bytes(params) // 4 - embed


def step_temp_bytes(model, params, state) -> int:
    """Temp memory XLA plans for one jitted one-token decode step (state donated)."""
    def step(p, s, tok_B1, pos):
        return model.apply({"params": p}, tok_B1, decode_state=s, pos=pos)
    abstract = lambda t: jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), t)
    compiled = jax.jit(step, donate_argnums=1).lower(
        abstract(params), abstract(state), jax.ShapeDtypeStruct((1, 1), jnp.int32),
        jax.ShapeDtypeStruct((), jnp.int32)).compile()
    return int(compiled.memory_analysis().temp_size_in_bytes)


def time_greedy(model, params, n: int, repeats: int) -> float:
    """Median seconds of greedy(model, params, [[0]], n), compile excluded.

    The function timed is the one `jaxmodels.generate.greedy` builds and calls (its cached
    `_decoder`), compiled ahead of time so no untimed full-length warm-up run is needed
    (at N = 8192 one run takes a minute on a busy 2-core CPU)."""
    from jaxmodels.generate import _decoder, _state_dtype, greedy

    prompt = jnp.zeros((1, 1), jnp.int32)
    args = (params, prompt, jax.random.key(0), jnp.float32(1.0), jnp.float32(1.0))
    fn = _decoder(model, 1, 1, n, True, None, False, jnp.dtype(_state_dtype(model)))
    compiled = fn.lower(*args).compile()
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = compiled(*args).block_until_ready()
        times.append(time.perf_counter() - t0)
    if n <= 256:  # the AOT-compiled function is greedy's: same tokens
        assert (np.asarray(out) == np.asarray(greedy(model, params, prompt, n))).all()
    return statistics.median(times)


def measure(label: str, spec: dict, lengths: list[int], repeats: int, max_tokens: int,
            max_timed: int) -> dict:
    """Rows for one model; lengths above max_timed get memory only (speed left out)."""
    model, params, n_params = build(spec, max(lengths) + 1)
    rows = []
    for n in lengths:
        state = jax.eval_shape(lambda: model.init_decode_state(1, n, jnp.float32))
        seconds = time_greedy(model, params, n, max(1, min(repeats, max_tokens // n))) if n <= max_timed else None
        rows.append({"length": n, "state_bytes": tree_bytes(state),
                     "step_temp_bytes": step_temp_bytes(model, params, state),
                     "seconds": seconds, "tokens_per_s": n / seconds if seconds else None,
                     "load_avg_1m": round(os.getloadavg()[0], 2)})
        speed = f"{rows[-1]['tokens_per_s']:8.1f} tok/s" if seconds else "not timed"
        print(f"{label:>20} N={n:>5}: state {rows[-1]['state_bytes'] / 1024:10.1f} KiB, "
              f"step temp {rows[-1]['step_temp_bytes'] / 1024:9.1f} KiB, {speed}", flush=True)
    return {"model": label, "config": spec, "params_non_embedding": n_params, "rows": rows}


def plot(results: list[dict], path: str, note: str = "") -> bool:
    """State bytes and tokens/s against length, log-log; False when matplotlib is missing."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot (pip install matplotlib)", file=sys.stderr)
        return False
    fig, (ax_mem, ax_speed) = plt.subplots(1, 2, figsize=(11, 4.2))
    for r in results:
        if "rows" not in r:
            continue
        n = [row["length"] for row in r["rows"]]
        ax_mem.plot(n, [row["state_bytes"] / 2 ** 20 for row in r["rows"]], "o-", label=r["model"])
        timed = [row for row in r["rows"] if row["tokens_per_s"]]
        ax_speed.plot([row["length"] for row in timed], [row["tokens_per_s"] for row in timed], "o-",
                      label=r["model"])
    for ax, ylabel in ((ax_mem, "decode state (MiB)"), (ax_speed, "tokens / s (batch 1)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("generated length N")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
    ax_mem.legend()
    ax_mem.set_title("decode state size")
    ax_speed.set_title("greedy decode speed (f32, CPU)")
    if note:
        fig.suptitle(note, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def plot_note(saved: dict) -> str:
    """Plot subtitle: machine, date and the load averages seen while timing."""
    info = saved["machine"]
    loads = [row["load_avg_1m"] for r in saved["results"] for row in r.get("rows", ())]
    load = f", 1-min load avg {min(loads):.1f}-{max(loads):.1f} while timing" if loads else ""
    return f"{info['cpu']} ({info['cores']} cores), jax {info['jax']}, {info['date_utc']}{load}"


def render(results: list[dict], info: dict) -> str:
    header = ["model", "params (non-emb.)", "N", "state KiB", "step temp KiB", "tokens/s", "load avg"]
    rows = []
    for r in results:
        if "rows" not in r:
            rows.append([r["model"], "—", "—", "—", "—", f"skipped: {r['error']}", "—"])
            continue
        for row in r["rows"]:
            rows.append([r["model"], f"{r['params_non_embedding'] / 1e6:.1f}M", row["length"],
                         f"{row['state_bytes'] / 1024:,.1f}", f"{row['step_temp_bytes'] / 1024:,.1f}",
                         f"{row['tokens_per_s']:,.0f}" if row["tokens_per_s"] else "not timed",
                         row["load_avg_1m"]])
    return (f"Measured {info['date_utc']} on {info['cpu']} ({info['cores']} cores), jax {info['jax']}, "
            f"1-min load average at the end {info['load_avg_1m']}.\n\n" + markdown_table(header, rows))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", default=",".join(map(str, DEFAULT_LENGTHS)))
    parser.add_argument("--repeats", type=int, default=3, help="timed greedy calls per length (median)")
    parser.add_argument("--max-tokens", type=int, default=8192,
                        help="fewer repeats at long lengths: at most max(1, this // N) timed calls")
    parser.add_argument("--gpt-max-timed", type=int, default=4096,
                        help="time GPT only up to this length (its decode is O(N^2) in total; "
                             "8192 takes ~20 min on a busy 2-core CPU); memory is still reported")
    parser.add_argument("--models", default="", help="comma-separated subset of: " + ", ".join(MODELS))
    parser.add_argument("--name", default="decode", help="results file stem")
    parser.add_argument("--plot-only", action="store_true", help="redraw the PNG from the saved JSON")
    args = parser.parse_args(argv)
    if args.plot_only:
        with open(os.path.join(RESULTS_DIR, f"{args.name}.json")) as f:
            saved = json.load(f)
        plot(saved["results"], os.path.join(RESULTS_DIR, f"{args.name}.png"), plot_note(saved))
        return 0
    lengths = [int(x) for x in args.lengths.split(",")]
    chosen = [m.strip() for m in args.models.split(",") if m.strip()] or list(MODELS)
    results = []
    for label in chosen:
        try:
            results.append(measure(label, MODELS[label], lengths, args.repeats, args.max_tokens,
                                   args.gpt_max_timed if MODELS[label]["name"] == "gpt" else max(lengths)))
        except (AttributeError, NotImplementedError, ImportError, TypeError) as e:
            # A family still being written (no decode contract yet) is skipped, not fatal.
            print(f"skipping {label}: {type(e).__name__}: {e}", file=sys.stderr)
            results.append({"model": label, "config": MODELS[label], "error": f"{type(e).__name__}: {e}"})
    info = machine()
    md = render(results, info)
    print(md)
    write_results(args.name, md, {"machine": info, "lengths": lengths, "results": results})
    plot(results, os.path.join(RESULTS_DIR, f"{args.name}.png"),
         plot_note({"machine": info, "results": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
