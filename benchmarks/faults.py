"""Fault injection: does a run survive kill -9, damaged checkpoints and a full disk?

    PYTHONPATH=. python -m benchmarks.faults [--kills 54] [--seed 0] [--sync_saves]

Three smoke runs (LM: gpt_shakespeare_char, DiT: dit_small, LoRA: llama_lora_tiny), each
first trained straight through as the reference. Then:
  kills   `kill -9` at a uniformly random moment of a launch.train process (import, compile,
          restore, training, async save, final eval alike), the same command re-run until
          the run finishes; each finished run is compared with the reference (every logged
          loss and the final params, bit for bit). Steps lost per kill = the newest logged
          step before the kill minus the step the re-run resumed from.
  damage  the newest checkpoint of a finished copy damaged each way (truncate the largest
          state file, delete a random state file, flip 64 bytes in place, remove the meta);
          launch-side reader (load_params) and a resumed run must both notice (or the damage
          must be harmless: the restored arrays pass their checksums), and the resumed run
          must end bit-identical to the reference.
  disk    the workdir on a small tmpfs (root only; else ENOSPC is simulated inside the
          save and the table says so): the save that fills it must fail with one line,
          leave no temporary folder, and the run copied to a normal disk must resume and
          end bit-identical; stderr must hold that one line and nothing else.
--sync_saves runs the kill episodes with train.async_checkpoint=false (at most one
checkpoint interval lost per kill, instead of 2 intervals - 1 with async saves).
Writes benchmarks/results/faults.json and faults.md.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings

from benchmarks.common import REPO_ROOT, RESULTS_DIR, machine
from tests.reliability.damage import DAMAGE_KINDS, damage
from tests.reliability.disk import small_disk

RUNS = {
    "LM": ("configs/gpt_shakespeare_char.py:smoke", ["data.max_bytes=20000", "train.eval_every=0"]),
    "DiT": ("configs/dit_small.py:smoke", ["train.eval_every=0"]),
    "LoRA": ("configs/llama_lora_tiny.py:smoke", ["train.eval_every=0"]),
}
COMMON = ["train.steps=30", "train.checkpoint_every=5", "train.log_every=1", "train.progress=false"]
INTERVAL = 5

# ENOSPC simulated inside the save (used only where no tmpfs can be mounted).
SIMULATED_FULL_DISK = """
import errno, os, sys
import orbax.checkpoint as ocp
save = ocp.CheckpointManager.save
def full(self, step, *a, **k):
    if step >= int(os.environ["FAULTS_FAIL_AT"]):
        os.makedirs(os.path.join(str(self.directory), f"{step}.orbax-checkpoint-tmp-1"), exist_ok=True)
        raise OSError(errno.ENOSPC, "No space left on device (simulated)")
    return save(self, step, *a, **k)
ocp.CheckpointManager.save = full
from launch.train import main
sys.exit(main(sys.argv[1:]))
"""


def command(name: str, workdir: str, sync: bool = False) -> list[str]:
    """sync: train.async_checkpoint=false (saves block the loop; same results, bit for bit)."""
    spec, overrides = RUNS[name]
    sync_flag = ["train.async_checkpoint=false"] if sync else []
    return [sys.executable, "-m", "launch.train", "--config", spec, "--workdir", workdir,
            *[f"--config.{o}" for o in overrides + COMMON + sync_flag]]


def env() -> dict:
    return {**os.environ, "PYTHONPATH": REPO_ROOT}


def run(cmd: list[str], timeout: float = 3600, extra_env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=REPO_ROOT, env={**env(), **(extra_env or {})}, capture_output=True,
                          text=True, timeout=timeout)


def logged(workdir: str) -> list:
    from jaxmodels.train.metrics import read_metrics
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    return [(r["step"], r.get("loss"), r.get("grad_norm")) for r in read_metrics(path) if "split" not in r]


def same_as(reference: str, workdir: str) -> bool:
    """Every logged train loss and the final params (and EMA) bit-identical."""
    from jaxmodels.train.checkpoint import load_params
    from tests.train.util import bit_identical
    if logged(workdir) != logged(reference):
        return False
    return all(bit_identical(load_params(reference, use_ema=e)[1], load_params(workdir, use_ema=e)[1])
               for e in (False, True))


def resumed_step(output: str) -> int:
    m = re.search(r"resumed from .* at step (\d+)", output)
    return int(m.group(1)) if m else 0


def kills(name: str, reference: str, n: int, rng: random.Random, run_seconds: float, scratch: str,
          sync: bool = False) -> dict:
    """n kill -9s at random moments, in episodes that each end with a finished run."""
    out = {"kills": 0, "episodes": 0, "resumed": 0, "exact": 0, "non_exact": 0, "max_lost": 0,
           "lost": [], "false_damaged": 0, "lock_takeovers": 0, "kill_phases": {}}
    durations = [run_seconds * 0.5]  # a re-run hits the compilation cache: shorter than the reference
    while out["kills"] < n:
        workdir = os.path.join(scratch, f"{name}_kills_{out['episodes']}")
        out["episodes"] += 1
        reached = None
        while True:
            proc = subprocess.Popen(command(name, workdir, sync), cwd=REPO_ROOT, env=env(), stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True)
            warm = sorted(durations)[len(durations) // 2]
            # Half the kills at a random moment of the process's life (mostly imports and
            # compilation), half right after a random training step is logged (training and
            # async saves): both kinds of moment get hit.
            mode = ("time" if rng.random() < 0.5 else "step") if out["kills"] < n else "none"
            t0 = time.time()
            finished = False
            if mode == "step":
                # A step this process logs itself: lines beyond those already in the file (a
                # resumed run first truncates to its checkpoint, then re-logs from there).
                target, start_lines = rng.randint(1, 30), len(logged(workdir))
                while proc.poll() is None:
                    rows = logged(workdir)
                    if len(rows) > start_lines and rows[-1][0] >= target or \
                            (len(rows) < start_lines and rows and rows[-1][0] >= target):
                        break
                    time.sleep(0.02)
            try:
                text, _ = proc.communicate(timeout=rng.uniform(0.2, warm) if mode == "time" else
                                           (0 if mode == "step" else None))
                finished = True
                if reached is None:
                    durations.append(time.time() - t0)
            except subprocess.TimeoutExpired:
                proc.kill()  # (no signal if it has already ended: then it is a finished run)
                text, _ = proc.communicate()
                finished = proc.returncode != -signal.SIGKILL
                before = logged(workdir)  # what the killed run had logged, all of it
            if reached is not None and ("resumed from" in text or finished):
                # The first run after kill(s) that got as far as choosing its resume point:
                # the work lost is what the killed runs had logged beyond that point.
                got = resumed_step(text)
                out["resumed"] += int(got > 0)
                out["lost"].append(max(0, reached - got))
                reached = None
            out["false_damaged"] += text.count("is damaged")
            out["lock_takeovers"] += int("taking over the lock" in text)
            if finished:
                if proc.returncode != 0:
                    raise RuntimeError(f"{name}: run failed (rc {proc.returncode}):\n{text[-3000:]}")
                break
            out["kills"] += 1
            # newest step logged so far (a run killed before it resumed adds nothing new)
            reached = max(reached or 0, max((r[0] for r in before), default=0))
            phase = ("before step 1" if not before else
                     "at the end" if reached >= 30 else "training")
            out["kill_phases"][phase] = out["kill_phases"].get(phase, 0) + 1
        ok = same_as(reference, workdir)
        out["exact" if ok else "non_exact"] += 1
        shutil.rmtree(workdir, ignore_errors=True)
    out["max_lost"] = max(out["lost"] or [0])
    return out


def damages(name: str, reference: str, rng: random.Random, scratch: str, repeats: int) -> dict:
    from jaxmodels.train.checkpoint import Checkpointer, checkpoint_dir, load_params
    from tests.train.util import bit_identical
    out = {"trials": 0, "detected": 0, "harmless": 0, "undetected": 0, "exact_after_resume": 0,
           "non_exact": 0, "by_kind": {}}
    newest = Checkpointer(reference).all_steps()[-1]
    previous = load_params(reference, use_ema=False, step=newest - INTERVAL)[1]
    intact = load_params(reference, use_ema=False, step=newest)[1]
    for kind in DAMAGE_KINDS:
        for r in range(repeats):
            workdir = os.path.join(scratch, f"{name}_damage_{kind}_{r}")
            shutil.copytree(reference, workdir)
            damage(os.path.join(checkpoint_dir(workdir), str(newest)), kind, rng)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                try:
                    got = load_params(workdir, use_ema=False)[1]
                except Exception as e:  # noqa: BLE001  (a reader crash is a failure to report)
                    got, caught = None, [f"reader crashed: {e}"]
            warned = any("damaged" in str(getattr(w, "message", w)) for w in caught)
            if warned and got is not None and bit_identical(got, previous):
                verdict = "detected"
            elif not warned and got is not None and bit_identical(got, intact):
                verdict = "harmless"
            else:
                verdict = "undetected"
            out[verdict] += 1
            out["by_kind"].setdefault(kind, {}).setdefault(verdict, 0)
            out["by_kind"][kind][verdict] += 1
            proc = run(command(name, workdir))  # the same command resumes (rerunning the lost steps)
            exact = proc.returncode == 0 and same_as(reference, workdir)
            out["exact_after_resume" if exact else "non_exact"] += 1
            out["trials"] += 1
            shutil.rmtree(workdir, ignore_errors=True)
    return out


def full_disk(name: str, reference: str, scratch: str) -> dict:
    """The workdir on a tmpfs that fills during a save (or simulated ENOSPC)."""
    # tmpfs pages are 4 KiB: count each file that way; 60% of the 3 kept checkpoints fills
    # up during the second save or so, after at least one save landed.
    size = int(0.6 * sum(4096 * -(-os.path.getsize(os.path.join(r, f)) // 4096)
                         for r, _, fs in os.walk(os.path.join(reference, "checkpoints")) for f in fs))
    mount = os.path.join(scratch, f"{name}_disk")
    out = {}
    with small_disk(mount, max(64, size // 1024)) as real:
        workdir = os.path.join(mount, "run")
        out["disk"] = "tmpfs" if real else "simulated ENOSPC"
        if real:
            proc = run(command(name, workdir))
        else:
            cmd = command(name, workdir)
            proc = run([sys.executable, "-c", SIMULATED_FULL_DISK, *cmd[3:]], extra_env={"FAULTS_FAIL_AT": "15"})
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        last = lines[-1] if lines else ""
        # exactly one line on stderr: the error (no Orbax traceback before it, nothing after)
        out["stderr_lines"] = len(lines)
        out["failed_cleanly"] = proc.returncode == 1 and len(lines) == 1 \
            and last.startswith("error: saving checkpoint") and "Free disk space" in last
        out["message"] = last[:300]
        ckpts = os.path.join(workdir, "checkpoints")
        out["tmp_left"] = [d for d in os.listdir(ckpts) if "tmp" in d] if os.path.isdir(ckpts) else []
        moved = os.path.join(scratch, f"{name}_disk_moved")
        shutil.copytree(workdir, moved)  # "free disk space": the same run, on a roomy disk
    proc = run(command(name, moved))
    out["resumed_exact"] = proc.returncode == 0 and same_as(reference, moved)
    shutil.rmtree(moved, ignore_errors=True)
    return out


def table(results: dict) -> str:
    rows = ["| run | kill -9s | re-runs that resumed | finished runs bit-identical | steps lost per kill (max; interval 5) | false \"damaged\" | damage trials: detected / harmless / undetected | bit-identical after damage | full disk: clean error, no temp left, exact resume |",
            "|---|---|---|---|---|---|---|---|---|"]
    for name, r in results["runs"].items():
        k, d, f = r["kills"], r["damage"], r["disk"]
        label = f"{name.removesuffix(' sync')} (kills with sync saves)" if r.get("sync_saves") else name
        rows.append(f"| {label} | {k['kills']} | {k['resumed']} | {k['exact']}/{k['episodes']} | {k['max_lost']} | "
                    f"{k['false_damaged']} | {d['detected']} / {d['harmless']} / {d['undetected']} | "
                    f"{d['exact_after_resume']}/{d['trials']} | "
                    f"{'yes' if f['failed_cleanly'] else 'NO'}, {'yes' if not f['tmp_left'] else 'NO'}, "
                    f"{'yes' if f['resumed_exact'] else 'NO'} ({f['disk']}) |")
    t = results["totals"]
    runs = results["runs"].values()
    lost = " / ".join(f"{max(r['kills']['max_lost'] for r in runs if bool(r.get('sync_saves')) == sync)} ({label})"
                      for sync, label in ((False, "async"), (True, "sync"))
                      if any(bool(r.get("sync_saves")) == sync for r in runs))
    disk_ok = sum(r["disk"]["failed_cleanly"] and not r["disk"]["tmp_left"] and r["disk"]["resumed_exact"] for r in runs)
    rows.append(f"| **all** | **{t['kills']}** | {t['resumed']} | {t['exact']}/{t['episodes']} | {lost} | "
                f"{t['false_damaged']} | {t['detected']} / {t['harmless']} / {t['undetected']} | "
                f"{t['exact_after_resume']}/{t['damage_trials']} | {disk_ok}/{len(results['runs'])} |")
    return "\n".join(rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=54, help="kill -9s in all (split over the three runs)")
    parser.add_argument("--repeats", type=int, default=2, help="trials per damage kind and run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runs", default="LM,DiT,LoRA")
    parser.add_argument("--sync_saves", action="store_true",
                        help="kill episodes run with train.async_checkpoint=false (the 1-interval bound)")
    parser.add_argument("--tag", default="", help="write faults_<tag>.json (runs split over processes)")
    parser.add_argument("--merge", default="", help="comma-separated tags: combine their results into faults.*")
    args = parser.parse_args(argv)
    if args.merge:
        return merge(args.merge.split(","))
    rng = random.Random(args.seed)
    names = args.runs.split(",")
    n_total = args.kills
    scratch = tempfile.mkdtemp(prefix="faults_")
    cache = os.path.join(scratch, "xla_cache")  # restarts reuse compiled steps (same executables)
    os.environ.update(JAX_COMPILATION_CACHE_DIR=cache, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    results = {"machine": machine(), "args": vars(args), "runs": {}}
    t_start = time.time()
    for i, name in enumerate(names):
        reference = os.path.join(scratch, f"{name}_reference")
        t0 = time.time()
        proc = run(command(name, reference))
        if proc.returncode != 0:
            raise RuntimeError(f"{name} reference run failed:\n{proc.stderr[-3000:]}")
        seconds = time.time() - t0
        n = n_total // len(names) + (1 if i < n_total % len(names) else 0)
        print(f"{name}: reference run {seconds:.1f} s; {n} kills", flush=True)
        r = {"reference_seconds": round(seconds, 1), "sync_saves": bool(args.sync_saves)}
        r["kills"] = kills(name, reference, n, rng, seconds, scratch, args.sync_saves)
        print(f"  kills: {json.dumps({k: v for k, v in r['kills'].items() if k != 'lost'})}", flush=True)
        r["damage"] = damages(name, reference, rng, scratch, args.repeats)
        print(f"  damage: {json.dumps(r['damage'])}", flush=True)
        r["disk"] = full_disk(name, reference, scratch)
        print(f"  disk: {json.dumps(r['disk'])}", flush=True)
        results["runs"][name] = r
    results["minutes"] = round((time.time() - t_start) / 60, 1)
    shutil.rmtree(scratch, ignore_errors=True)
    if args.tag:
        os.makedirs(RESULTS_DIR, exist_ok=True)
        with open(os.path.join(RESULTS_DIR, f"faults_{args.tag}.json"), "w") as f:
            json.dump(results, f, indent=1)
        return 0
    return write(results, n_total, args.seed)


def merge(tags: list[str]) -> int:
    """Combines per-process results (--tag) into one table."""
    parts = [json.load(open(os.path.join(RESULTS_DIR, f"faults_{t}.json"))) for t in tags]
    results = {"machine": parts[-1]["machine"], "parts": [p["args"] for p in parts], "runs": {},
               "minutes": max(p["minutes"] for p in parts)}
    for p in parts:  # a run measured twice (async and sync saves) keeps both rows
        results["runs"].update({f"{name} sync" if r.get("sync_saves") else name: r for name, r in p["runs"].items()})
    return write(results, sum(p["args"]["kills"] for p in parts), parts[0]["args"]["seed"], tags)


def write(results: dict, n_total: int, seed: int, tags: list[str] | None = None) -> int:
    keys = ("kills", "resumed", "exact", "non_exact", "episodes", "false_damaged")
    totals = {k: sum(r["kills"][k] for r in results["runs"].values()) for k in keys}
    totals["max_lost"] = max(r["kills"]["max_lost"] for r in results["runs"].values())
    for k in ("detected", "harmless", "undetected", "exact_after_resume", "non_exact"):
        totals[k if k != "non_exact" else "damage_non_exact"] = sum(r["damage"][k] for r in results["runs"].values())
    totals["damage_trials"] = sum(r["damage"]["trials"] for r in results["runs"].values())
    results["totals"] = totals
    os.makedirs(RESULTS_DIR, exist_ok=True)
    with open(os.path.join(RESULTS_DIR, "faults.json"), "w") as f:
        json.dump(results, f, indent=1)
    md = table(results)
    m = results["machine"]
    how = (f"`PYTHONPATH=. python -m benchmarks.faults --kills {n_total} --seed {seed}`" if not tags else
           "processes side by side, " + ", ".join(
               f"`PYTHONPATH=. python -m benchmarks.faults --runs {p['runs']} --kills {p['kills']} "
               f"--repeats {p['repeats']} --seed {p['seed']}{' --sync_saves' if p.get('sync_saves') else ''} "
               f"--tag {p['tag']}`" for p in results["parts"])
           + f", then `python -m benchmarks.faults --merge {','.join(tags)}`")
    md += (f"\n\n{m['cpu']}, {m['cores']} cores, load average {m['load_avg_1m']}, {m['date_utc']}, "
           f"{results['minutes']} min. {how}\n")
    with open(os.path.join(RESULTS_DIR, "faults.md"), "w") as f:
        f.write(md)
    print(md)
    bad = totals["undetected"] + totals["non_exact"] + totals["damage_non_exact"] \
        + sum(not (r["disk"]["failed_cleanly"] and r["disk"]["resumed_exact"]) for r in results["runs"].values())
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
