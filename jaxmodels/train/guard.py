"""Host side of the finite-state guarantee: reads the per-step flags the jitted step returns
("finite": the state after the step is free of NaN/inf; "skipped": the outlier skip dropped
the update) and decides to go on, stop, or roll back.

The loop calls `inspect` on every fetched batch of step metrics before it saves anything, so
a checkpoint is only ever written after the flag of its own step (and of every step before
it) said finite: the kept "last good" checkpoint is finite by construction.
"""
from __future__ import annotations

import math
from typing import Callable

import ml_collections


class TrainingDivergedError(FloatingPointError):
    """The loss, the gradient norm or the updated state became NaN/inf; the last good
    checkpoint is kept."""


class StepGuard:
    """Stops on a non-finite step (without the skip option) or asks for a rollback after
    train.rollback_after consecutive skipped steps (with it)."""

    def __init__(self, train_cfg: ml_collections.ConfigDict, workdir: str, last_saved: int):
        self.skip = float(train_cfg.get("skip_loss_z", 0.0) or 0.0) > 0
        self.rollback_after = int(train_cfg.get("rollback_after", 0) or 0)
        self.workdir = workdir
        self.last_saved = last_saved
        self.bad_run = 0  # consecutive skipped steps

    def _kept(self) -> str:
        return (f"the last good checkpoint (step {self.last_saved}) in {self.workdir} is kept"
                if self.last_saved >= 0 else "no checkpoint had been saved yet")

    def _diverged(self, reason: str, advice: str) -> TrainingDivergedError:
        err = TrainingDivergedError(f"{reason}; stopped: {self._kept()}. {advice}")
        err.reason, err.advice = reason, advice
        return err

    def vet_kept(self, err: TrainingDivergedError, steps: list, loss_at: Callable[[int], float],
                 set_aside: Callable[[int], None]) -> TrainingDivergedError:
        """A finite checkpoint can still be useless: params of 1e30 are finite, but the next
        loss from them is NaN whatever the lr. So after a divergence, each kept checkpoint
        (newest first) computes one val batch's loss; those whose loss is not finite are set
        aside until one is, and the error names the checkpoint a re-run will really resume from."""
        moved = []
        for step in reversed(steps):
            try:
                loss = float(loss_at(step))
            except Exception:  # noqa: BLE001  (unreadable: restore's own fallback handles it)
                break
            if math.isfinite(loss):
                break
            set_aside(step)
            moved.append(step)
        left = [s for s in steps if s not in moved]
        self.last_saved = left[-1] if left else -1
        note = (f" Checkpoint(s) {moved} give a non-finite val loss themselves (their params already "
                f"overflowed): moved to {self.workdir}/diverged_checkpoints." if moved else "")
        return TrainingDivergedError(f"{err.reason}; stopped: {self._kept()}.{note} {err.advice}")

    def inspect(self, fetched: list) -> bool:
        """fetched: [(step, metrics dict)]; pops the internal "finite" flag from each dict.
        Raises TrainingDivergedError, or returns True when the run should roll back."""
        rollback = False
        for s, m in fetched:
            finite = float(m.pop("finite", 1.0)) > 0
            if self.skip:
                if float(m.get("skipped", 0.0)) > 0:
                    self.bad_run += 1
                    if self.rollback_after > 0 and self.bad_run >= self.rollback_after:
                        rollback, self.bad_run = True, 0
                else:
                    self.bad_run = 0
                continue
            bad = [k for k in ("loss", "grad_norm") if not math.isfinite(float(m[k]))]
            if bad:
                raise self._diverged(f"{' and '.join(bad)} became {float(m[bad[0]])} at step {s}",
                                     "Lower optim.lr, raise optim.warmup_steps, or check the data "
                                     "(train.skip_loss_z skips such steps instead).")
            if not finite:
                raise self._diverged(
                    f"the params or optimizer state became NaN/inf in the update of step {s} (loss "
                    f"{float(m['loss']):.4g} and gradient norm {float(m['grad_norm']):.4g} were finite), "
                    f"so it was not saved", "Lower optim.lr (the update overflows), or set "
                    "train.skip_loss_z to skip such steps.")
        return rollback
