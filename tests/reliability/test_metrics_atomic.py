"""Defect 5: on resume, truncate_after rewrote metrics.jsonl in place ("w" then write), so a
kill in between left a 0-byte history. Now it writes a temporary file and renames it."""
import builtins
import json
import os

import pytest

from jaxmodels.train import metrics as metrics_lib


class Killed(BaseException):
    """Stands for a kill -9 in the middle of a write."""


def test_kill_during_truncation_keeps_the_history(tmp_path, monkeypatch):
    path = str(tmp_path / "metrics.jsonl")
    rows = [{"step": s, "loss": 1.0 / s} for s in range(1, 31)]
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    before = open(path).read()
    real_open = builtins.open

    class DiesOnWrite:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, *a):
            raise Killed

        writelines = write

        def __getattr__(self, name):
            return getattr(self.f, name)

    def dying_open(file, mode="r", *args, **kwargs):
        f = real_open(file, mode, *args, **kwargs)
        return DiesOnWrite(f) if "w" in mode else f

    monkeypatch.setattr(builtins, "open", dying_open)
    with pytest.raises(Killed):
        metrics_lib.truncate_after(path, 20)
    monkeypatch.undo()
    assert open(path).read() == before  # the old history, whole
    metrics_lib.truncate_after(path, 20)  # the next resume does it
    assert [json.loads(line)["step"] for line in open(path)] == list(range(1, 21))
    assert [f for f in os.listdir(tmp_path)] == ["metrics.jsonl"]  # no temporary left behind
