"""Issue 9, steps lost per kill: what a kill -9 costs is the logged steps past the newest
*finished* checkpoint. With async saves the loop logged step S+k before waiting for save S,
so a kill right after logging step S+k (k = checkpoint_every) while save S was still being
written resumed from S-k: 2 intervals lost. Now the previous save is finished before a
checkpoint step is logged (< 2 intervals), and train.async_checkpoint=false keeps it to 1."""
import os
import threading
import time

import jax

from jaxmodels.train import checkpoint as checkpoint_lib
from jaxmodels.train import metrics as metrics_lib
from jaxmodels.train.loop import train
from tests.train.util import toy_cfg

EVERY = 5


def _finished(workdir: str) -> list[int]:
    folder = checkpoint_lib.checkpoint_dir(workdir)
    return sorted(int(d) for d in os.listdir(folder) if d.isdigit()) if os.path.isdir(folder) else []


def _worst_loss(monkeypatch, workdir: str, asynchronous: bool = True) -> int:
    """Trains the toy run with every save slowed down (written 0.3 s after it starts, in the
    background, like a big checkpoint on a slow disk); returns the most logged steps a kill
    right after any metrics line would have to redo."""
    real_save, real_wait = checkpoint_lib.Checkpointer.save, checkpoint_lib.Checkpointer.wait
    threads: dict = {}

    def slow_save(self, step, state, data_iter, meta):
        wait(self)
        state = jax.device_get(state)  # the step donates its input buffers
        # (the data position is not saved: this run is never resumed)
        t = threading.Thread(target=lambda: (time.sleep(0.3), real_save(self, step, state, None, meta),
                                             real_wait(self)))
        threads[id(self)] = t
        t.start()
        if not asynchronous:
            wait(self)  # a synchronous save returns once it is on disk

    def wait(self):
        t = threads.get(id(self))
        if t is not None and t is not threading.current_thread():
            threads.pop(id(self)).join()
        real_wait(self)

    lost = []
    real_write = metrics_lib.MetricsWriter.write

    def write(self, step, m):
        real_write(self, step, m)
        if "loss" in m:
            lost.append(step - max([0] + _finished(workdir)))

    monkeypatch.setattr(checkpoint_lib.Checkpointer, "save", slow_save)
    monkeypatch.setattr(checkpoint_lib.Checkpointer, "wait", wait)
    monkeypatch.setattr(metrics_lib.MetricsWriter, "write", write)
    cfg = toy_cfg(train__steps=4 * EVERY, train__log_every=1, train__checkpoint_every=EVERY,
                  train__eval_every=0, train__checkpoint_minutes=0.0,
                  train__async_checkpoint=str(asynchronous).lower())
    train(cfg, workdir)
    assert _finished(workdir)[-1] == 4 * EVERY and len(lost) == 4 * EVERY
    return max(lost)


def test_async_save_in_flight_costs_less_than_two_intervals(tmp_path, monkeypatch):
    worst = _worst_loss(monkeypatch, str(tmp_path / "run"))
    assert EVERY < worst < 2 * EVERY  # save S still being written while S+1..S+k-1 are logged


def test_synchronous_saves_cost_at_most_one_interval(tmp_path, monkeypatch):
    assert _worst_loss(monkeypatch, str(tmp_path / "run"), asynchronous=False) <= EVERY
