"""Where a train step's time goes on XLA:CPU: one step's thunks, summed by kind.

Builds the step as launch.train does (one device per core on a CPU, `train.bench.prepare`),
times a few untraced steps, then traces one with XLA:CPU's per-thunk trace events
(`--xla_cpu_enable_xprof_traceme=true` under `jax.profiler.trace`) and sums the thread time
of every thunk that is an instruction of the compiled program, grouped by what it is: a
custom call by its target (the C++ kernels: `jaxmodels_cpu_matmul`, `..._attention_fwd`,
...), a fusion by its kind, anything else by its opcode. The times add up over all threads
and devices. The trace flag slows every step of the process, traced or not (the DiT-S/2 step
below: 5.2 s with it, 4.1 s without), so read the shares, not the milliseconds.

    python -m benchmarks.step_profile --config configs/dit_b2.py --set model.size=dit-s/2 \\
        --set model.dtype=float32 --set train.batch_size=32 --set model.remat=none --set train.micro_batches=1

Writes results/step_profile_<machine type>.{md,json} (or --name).
"""
from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import statistics
import sys
import tempfile
import time

TRACE_FLAG = "--xla_cpu_enable_xprof_traceme=true"
# An HLO instruction line: "%name = <type> opcode(...)..." (ROOT and the % are optional).
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*.*?\s([a-z][\w\-]*)\(")
_TARGET = re.compile(r'custom_call_target="([^"]+)"')
_FUSION_KIND = re.compile(r"\bkind=(k\w+)")


def instruction_kinds(hlo_text: str) -> dict[str, str]:
    """Instruction name -> its group: a custom call's target, "fusion (kLoop)" etc., or the opcode."""
    kinds = {}
    for line in hlo_text.splitlines():
        m = _INSTRUCTION.match(line)
        if not m:
            continue
        name, opcode = m.groups()
        if opcode == "custom-call" and (t := _TARGET.search(line)):
            kinds[name] = t.group(1)
        elif opcode == "fusion" and (k := _FUSION_KIND.search(line)):
            kinds[name] = f"fusion ({k.group(1)})"
        else:
            kinds[name] = opcode
    return kinds


def thunk_times(trace_dir: str, kinds: dict[str, str]) -> dict[str, list]:
    """Group -> [thread-time us, count] over the trace's complete events that are program instructions."""
    path = glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True)[0]
    events = json.load(gzip.open(path))["traceEvents"]
    out = collections.defaultdict(lambda: [0.0, 0])
    for e in events:
        if e.get("ph") == "X" and e.get("name") in kinds:
            out[kinds[e["name"]]][0] += e["dur"]
            out[kinds[e["name"]]][1] += 1
    return dict(out)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True)
    p.add_argument("--set", action="append", default=[], help="a config override (repeatable)")
    p.add_argument("--steps", type=int, default=3, help="untraced steps timed before the traced one")
    p.add_argument("--name", default=None, help="results file name (default: step_profile_<machine type>)")
    args = p.parse_args()
    from jaxmodels import hugepages
    hugepages.reexec_if_wanted()  # as launch.train runs: glibc's huge-page tunable where it helps
    # Before jax starts its backend: the flag is read once, at start-up.
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {TRACE_FLAG}".strip()
    import jax

    from benchmarks.common import machine, machine_tag, markdown_table, write_results
    from jaxmodels.config import load_config
    from jaxmodels.train.bench import prepare

    cfg = load_config(args.config, args.set)
    _, mesh, step_fn, state, next_batch = prepare(cfg)
    batch = next_batch()
    compiled = step_fn.lower(state, batch).compile()
    kinds = instruction_kinds(compiled.as_text())
    times = []
    for i in range(args.steps + 1):  # the first call warms up
        t0 = time.perf_counter()
        state, _ = compiled(state, batch)
        jax.block_until_ready(state)
        if i:
            times.append(time.perf_counter() - t0)
    with tempfile.TemporaryDirectory() as trace_dir:
        with jax.profiler.trace(trace_dir):
            t0 = time.perf_counter()
            state, _ = compiled(state, batch)
            jax.block_until_ready(state)
            traced_s = time.perf_counter() - t0
        groups = thunk_times(trace_dir, kinds)
    total = sum(us for us, _ in groups.values())
    rows = [[kind, f"{us / 1e3:.0f}", f"{us / total:.2f}", n]
            for kind, (us, n) in sorted(groups.items(), key=lambda kv: -kv[1][0]) if us / total >= 0.001]
    info = machine()
    devices = 1 if mesh is None else mesh.size
    head = (f"{info['cpu']} ({info['cores']} cores; {info['isa']}), jax {info['jax']}, {info['date_utc']}, "
            f"1-min load average {info['load_avg_1m']}\n\n`{args.config}` {' '.join(args.set)}; {devices} device(s); "
            f"untraced step {statistics.median(times):.3f} s (median of {len(times)}), traced step {traced_s:.3f} s; "
            f"thread time in program thunks {total / 1e6:.2f} s (all threads and devices)\n\n")
    md = head + markdown_table(["thunk group", "thread ms", "share", "count"], rows)
    print(md)
    write_results(args.name or f"step_profile_{machine_tag()}", md,
                  {"machine": info, "config": args.config, "overrides": args.set, "devices": devices,
                   "untraced_step_s": times, "traced_step_s": traced_s, "groups": groups})
    return 0


if __name__ == "__main__":
    sys.exit(main())
