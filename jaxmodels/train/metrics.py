"""Metrics output: workdir/metrics.jsonl (one JSON object per line) and optional TensorBoard."""
from __future__ import annotations

import json
import logging
import math
import os
from typing import Any, Mapping

log = logging.getLogger(__name__)


def _clean(value: Any):
    value = float(value) if hasattr(value, "__float__") and not isinstance(value, (int, str)) else value
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no nan/inf
    return value


def truncate_after(path: str, step: int) -> None:
    """Drops lines logged after `step` (a resumed run re-logs them, identically).

    Atomic: the kept lines go to a temporary file (flushed to disk) that then replaces the
    original in one rename, so a kill at any moment leaves either the old or the new history,
    never an empty or half-written one.
    """
    if not os.path.exists(path):
        return
    with open(path) as f:
        lines = f.readlines()
    kept = []
    for line in lines:
        try:
            if int(json.loads(line)["step"]) <= step:
                kept.append(line if line.endswith("\n") else line + "\n")
        except (ValueError, KeyError, TypeError):
            continue  # a line cut short by a kill
    if kept == lines:
        return  # nothing to drop: leave the file alone
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "w") as f:
            f.writelines(kept)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def read_metrics(path: str) -> list[dict]:
    """All complete lines of a metrics.jsonl."""
    out = []
    with open(path) as f:
        for line in f:
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out


class MetricsWriter:
    """Appends metric dicts to workdir/metrics.jsonl; mirrors them to TensorBoard if asked."""

    def __init__(self, workdir: str, tensorboard: bool = False):
        self.path = os.path.join(workdir, "metrics.jsonl")
        self.file = open(self.path, "a")
        self.tb = None
        if tensorboard:
            try:
                from tensorboardX import SummaryWriter
                self.tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
            except ImportError:
                log.warning("train.tensorboard=True but tensorboardX is not installed "
                            "(pip install tensorboardX); writing metrics.jsonl only")

    def write(self, step: int, metrics: Mapping[str, Any]) -> None:
        row = {"step": int(step), **{k: _clean(v) for k, v in metrics.items()}}
        self.file.write(json.dumps(row) + "\n")
        self.file.flush()  # a kill -9 must not lose logged lines
        if self.tb is not None:
            prefix = f"{row['split']}/" if "split" in row else "train/"
            for k, v in row.items():
                if isinstance(v, (int, float)) and k != "step":
                    self.tb.add_scalar(prefix + k, v, step)

    def close(self) -> None:
        self.file.close()
        if self.tb is not None:
            self.tb.close()
