"""The toy task with faults on demand: an evaluation that raises at chosen steps
(task.eval_fail_steps) and train batches whose loss is scaled by task.spike_scale (a loss
spike, or NaN) at chosen batch indices (task.spike_batches; batch i is step i+1)."""
from __future__ import annotations

import grain
import numpy as np

from tests.train.toy_task import ToySource, ToyTask


class EvalFailsTask(ToyTask):
    def evaluate(self, params, step, workdir):
        if int(step) in tuple(self.cfg.task.get("eval_fail_steps", ())):
            raise RuntimeError(f"eval exploded at step {step}")
        return super().evaluate(params, step, workdir)


class SpikyTask(ToyTask):
    def dataset(self, split, batch_size, seed):
        t = self.cfg.task
        spikes = set(int(i) for i in t.get("spike_batches", ()))
        scale = float(t.get("spike_scale", float("nan")))
        src = ToySource(int(self.cfg.model.vocab), self.seq_len, 256, offset=0 if split == "train" else 10_000)
        ds = grain.MapDataset.source(src).shuffle(seed=seed)
        if split == "train":
            ds = ds.repeat()
        ds = ds.batch(batch_size, drop_remainder=True)

        def spike(i, batch):
            s = scale if (split == "train" and i in spikes) else 1.0
            return {**batch, "scale": np.full((batch_size,), s, np.float32)}

        return ds.map_with_index(spike).to_iter_dataset()
