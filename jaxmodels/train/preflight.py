"""Checks before step 0 and the guarded evaluation.

An eval that can never run (a val split smaller than one eval batch) used to crash at the
first eval step, after the train steps before it were done but before they were saved, so
every re-run died at the same step. Now it is refused before step 0, and an eval that fails
later is reported while training goes on (train.eval_errors="raise" stops instead).
"""
from __future__ import annotations

import logging
import traceback
from typing import Callable, Optional

import ml_collections

from jaxmodels.config import ConfigError

log = logging.getLogger(__name__)


def check_eval_inputs(task, cfg: ml_collections.ConfigDict) -> None:
    """Builds the val split at the eval batch size and draws one batch, or raises ConfigError."""
    tc = cfg.train
    if int(tc.eval_batches) <= 0:
        return
    eval_bs = int(tc.batch_size) // int(tc.micro_batches)
    from jaxmodels.data.sources import DataError, DataNotFoundError
    try:
        next(iter(task.dataset("val", eval_bs, int(tc.seed))))
    except (DataError, DataNotFoundError):
        raise  # about the data itself, not the eval batch: its own message says what to fix
    except StopIteration:
        raise ConfigError(f"the val split yields no batch of {eval_bs} (train.batch_size / train.micro_batches): "
                          f"give it more examples (data.val_size) or lower train.batch_size") from None
    except (ValueError, IndexError) as e:  # ConfigError included
        raise ConfigError(f"evaluation cannot run: {e}. The eval batch is train.batch_size / "
                          f"train.micro_batches = {eval_bs}: lower it, give the val split more examples "
                          f"(data.val_size, more data), or set train.eval_batches=0") from None


def check_resume_step(step: int, total_steps: int, workdir: str) -> None:
    if step > total_steps:
        raise ConfigError(f"the newest checkpoint in {workdir} is at step {step}, past train.steps="
                          f"{total_steps}: pass --config.train.steps={step} or more to continue it, "
                          f"or a fresh --workdir")


def run_eval_safely(evaluate: Callable[[], dict], writer, step: int,
                    tc: ml_collections.ConfigDict) -> Optional[dict]:
    """Runs evaluate(), logs and returns its metrics; an exception is reported (printed, logged
    and a {"split": "val", "eval_error": ...} line, returning None) unless
    train.eval_errors == "raise"."""
    mode = str(tc.get("eval_errors", "warn"))
    if mode not in ("warn", "raise"):
        raise ConfigError(f"train.eval_errors={mode!r}; valid: warn, raise")
    try:
        metrics = evaluate()
    except Exception as e:  # noqa: BLE001  (Ctrl-C and SystemExit still stop the run)
        if mode == "raise":
            raise
        msg = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
        print(f"\nevaluation at step {step} failed ({msg}); training goes on "
              f"(train.eval_errors=raise stops instead)", flush=True)
        log.warning("evaluation at step %d failed:\n%s", step, traceback.format_exc())
        writer.write(step, {"split": "val", "eval_error": msg})
        return None
    writer.write(step, metrics)
    return metrics


def has_eval_line(metrics_path: str, step: int) -> bool:
    """Whether metrics.jsonl holds an eval (or eval_error) line for `step`."""
    from jaxmodels.train.metrics import read_metrics
    import os
    if not os.path.exists(metrics_path):
        return False
    return any(r.get("step") == step and "split" in r for r in read_metrics(metrics_path))
