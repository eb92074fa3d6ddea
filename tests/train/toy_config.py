"""Tiny config for trainer tests (the toy task in tests/train/toy_task.py).

    python -m launch.train --config tests/train/toy_config.py --workdir /tmp/toy
"""
import ml_collections

from jaxmodels.train.defaults import base_config


def get_config(arg=None):
    c = base_config()
    c.model = ml_collections.ConfigDict(dict(name="toy", vocab=16, width=32, layers=2, seq_len=8,
                                             remat="none"))
    c.task = ml_collections.ConfigDict(dict(name="tests.train.toy_task:ToyTask", nan_after=-1,
                                            delay=0.0, frozen=()))
    c.optim.lr = 3e-3
    c.optim.warmup_steps = 5
    c.train.steps = 30
    c.train.batch_size = 8
    c.train.log_every = 5
    c.train.eval_every = 10
    c.train.eval_batches = 2
    c.train.checkpoint_every = 10
    c.train.progress = False
    c.memory.check = False
    if arg == "ema":
        c.train.ema_decay = 0.9
        c.train.ema_warmup = True
    return c
