"""The README's first command on a fresh clone: when do the CPU advice, the plan line, the
measured estimate and the first sample grid appear?

    python benchmarks/first_grid.py [--timeout 1200] [--config configs/dit_small.py]

Clones this repository (its committed HEAD) into a temporary folder, runs
`python -m launch.train --config configs/dit_small.py` there with an empty JAXMODELS_CACHE
(as a new user has: no cached matmul peak, no judge), timestamps every output line, and
stops at the first PNG in runs/dit_small/samples/ (or the timeout). Writes
benchmarks/results/first_grid.json with the seconds since start of each milestone, the
load average and the CPU model.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MILESTONES = {"advice": "advice:", "plan": "plan:", "estimate": "measured:", "eval_line": "eval at step"}


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        return next(l.split(":", 1)[1].strip() for l in out.splitlines() if l.startswith("Model name"))
    except (OSError, StopIteration):
        return platform.processor()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/dit_small.py")
    p.add_argument("--timeout", type=float, default=1200.0)
    args = p.parse_args(argv)
    tmp = tempfile.mkdtemp(prefix="jaxmodels_first_grid_")
    clone = os.path.join(tmp, "clone")
    subprocess.run(["git", "clone", "-q", ROOT, clone], check=True)
    commit = subprocess.run(["git", "-C", clone, "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    env = dict(os.environ, PYTHONPATH=clone, JAXMODELS_CACHE=os.path.join(tmp, "cache"), PYTHONUNBUFFERED="1")
    name = os.path.splitext(os.path.basename(args.config))[0]
    samples = os.path.join(clone, "runs", name, "samples")
    load_start = os.getloadavg()
    start = time.time()
    proc = subprocess.Popen([sys.executable, "-m", "launch.train", "--config", args.config], cwd=clone, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen: dict = {}
    lines: list = []

    def read():
        buf = ""
        while True:
            ch = proc.stdout.read(1)
            if not ch:
                return
            if ch in "\r\n":
                if buf.strip():
                    t = time.time() - start
                    lines.append(f"[{t:7.1f}s] {buf.strip()[:300]}")
                    for key, text in MILESTONES.items():
                        if key not in seen and text in buf:
                            seen[key] = round(t, 1)
                buf = ""
            else:
                buf += ch

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    loads = []
    while time.time() - start < args.timeout and proc.poll() is None:
        time.sleep(2)
        if int(time.time() - start) % 60 < 2:
            loads.append(os.getloadavg()[0])
        if os.path.isdir(samples) and any(f.endswith(".png") for f in os.listdir(samples)):
            seen["first_png"] = round(time.time() - start, 1)
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    result = {"command": f"python -m launch.train --config {args.config}", "commit": commit,
              "seconds_since_start": seen, "timeout_s": args.timeout,
              "load_avg_1min_at_start": load_start[0], "load_avg_1min_samples": loads,
              "cpu": cpu_model(), "cores": os.cpu_count(),
              "measured_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(start)),
              "log_head": [l for l in lines if "step/s" not in l and "s/step" not in l][:40]}
    out = os.path.join(ROOT, "benchmarks", "results", "first_grid.json")
    with open(out, "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps({k: v for k, v in result.items() if k != "log_head"}, indent=1))
    print(f"wrote {out}")
    return 0 if "first_png" in seen else 1


if __name__ == "__main__":
    sys.exit(main())
