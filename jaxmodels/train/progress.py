"""What a run tells its user on the console (metrics.jsonl stays the record).

- first, on a CPU, the config's advice (`train.cpu_variant`) when the config is sized for a
  GPU: the command of a variant that finishes in minutes;
- then, before anything compiles, a plan line: steps, examples and units (images, tokens)
  the run will see and where it saves;
- after the first few timed steps, the measured time per step and what the whole run will
  take on this machine;
- a short line at every log step when the tqdm bar is off (`train.progress=False`, e.g. the
  `:smoke` variants), so no run is silent;
- the evaluation metrics (val loss, judge accuracy, exact match, ...) when computed.

Lines go through tqdm.write when a bar is shown, so they do not tear it.
"""
from __future__ import annotations

import os
import sys
import time
from typing import Mapping, Optional

import jax

# Timed steps (after the first, compiled one) before the run-time estimate is printed.
ESTIMATE_AFTER_STEPS = 3


def human_duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.0f} days"


def _count(n: float) -> str:
    for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if n >= 10 * scale:
            return f"{n / scale:,.1f}{suffix}".replace(".0" + suffix, suffix)
    return f"{n:,.0f}"


def on_cpu() -> bool:
    return jax.default_backend() == "cpu"


def plan_line(cfg, unit: str, units_per_example: float, start_step: int, workdir: str) -> str:
    """One line: what this run is (before step 0)."""
    tc = cfg.train
    steps, batch = int(tc.steps), int(tc.batch_size)
    todo = max(0, steps - start_step)
    examples = todo * batch
    what = f"{todo:,} steps x {batch} examples"
    if unit != "examples" and units_per_example:
        what += f" = {_count(examples * units_per_example)} {unit}"
    else:
        what += f" = {_count(examples)} examples"
    where = f"resuming at step {start_step:,} of {steps:,}: " if start_step else ""
    saves = []
    if int(tc.checkpoint_every) > 0:
        saves.append(f"every {int(tc.checkpoint_every):,} steps")
    minutes = float(tc.get("checkpoint_minutes", 0.0) or 0.0)
    if minutes > 0:
        saves.append(f"every {minutes:g} min")
    device = jax.devices()[0]
    kind = f"{device.platform} ({device.device_kind})" if device.platform != "cpu" else "cpu"
    return (f"plan: {where}{what} on {kind}; checkpoints {' and '.join(saves) or 'at the end'} "
            f"to {workdir}")


def saved_steps(workdir: str) -> list[int]:
    """Steps of the checkpoints in workdir, read from the folder names (no restore): what the
    plan line says before anything is compiled or restored."""
    folder = os.path.join(workdir, "checkpoints")
    return sorted(int(n) for n in os.listdir(folder) if n.isdigit()) if os.path.isdir(folder) else []


def cpu_advice(cfg) -> Optional[str]:
    """On a CPU, the config's pointer to a variant that finishes in minutes, if it declares one."""
    hint = str(cfg.train.get("cpu_variant", "") or "")
    if not hint or not on_cpu():
        return None
    return (f"advice: this config is sized for a GPU; on this CPU it will take hours. "
            f"For a run that finishes in minutes: {hint}")


class Reporter:
    """Prints the estimate, log lines (without a bar) and eval metrics."""

    def __init__(self, cfg, unit: str, units_per_batch: float, bar=None, stream=None):
        self.cfg = cfg
        self.unit = unit
        self.units_per_batch = units_per_batch
        self.bar = bar
        self.stream = stream or sys.stdout
        self.total = int(cfg.train.steps)
        self._first: Optional[tuple[int, float]] = None  # (step, time) when step 1 of this process finished
        self.estimated = False

    def say(self, line: str) -> None:
        if self.bar is not None:
            self.bar.write(line, file=self.stream)
        else:
            print(line, file=self.stream, flush=True)

    def step_done(self, step: int, metrics) -> None:
        """Call after each step is dispatched (the loop keeps at most one step in flight, so
        the bar moves with the device); blocks once more, to time the first steps."""
        if self.bar is not None:
            self.bar.update(step - 1 - self.bar.n)  # steps known to be done
        if self.estimated:
            return
        if self._first is None:  # the first step of this process includes the compile
            jax.block_until_ready(metrics)
            self._first = (step, time.perf_counter())
            return
        n = step - self._first[0]
        if n < ESTIMATE_AFTER_STEPS and step < self.total:
            return
        jax.block_until_ready(metrics)
        per_step = (time.perf_counter() - self._first[1]) / max(1, n)
        left = self.total - step
        rate = self.units_per_batch / per_step if per_step > 0 else 0.0
        line = (f"measured: {per_step:.3g} s/step ({rate:,.0f} {self.unit}/s) over steps "
                f"{self._first[0] + 1}-{step}; the {left:,} steps left take ~{human_duration(left * per_step)} "
                f"on this machine (training only; evaluations add to it)")
        self.say(line)
        self.estimated = True

    def log(self, step: int, m: Mapping[str, float]) -> None:
        """A short line per log step when no bar shows progress."""
        if self.bar is not None:
            return
        parts = [f"step {step}/{self.total}", f"loss {m['loss']:.4f}"]
        rate = m.get(f"{self.unit}_per_s")
        if rate:
            parts.append(f"{rate:,.0f} {self.unit}/s")
        self.say("  ".join(parts))

    def eval(self, step: int, metrics: Mapping) -> None:
        shown = [f"{k} {v:.4g}" for k, v in metrics.items()
                 if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "step"]
        if shown:
            self.say(f"eval at step {step}: " + ", ".join(shown))
