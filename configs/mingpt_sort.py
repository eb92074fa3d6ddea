"""minGPT's sorting demo (projects/demo.ipynb): gpt-nano learns to sort 6 digits of 0-2.

    python -m launch.train --config configs/mingpt_sort.py          # a few CPU minutes
    python -m launch.train --config configs/mingpt_sort.py:smoke    # tiny, for tests

Each example is 6 digits followed by the same digits sorted; the loss counts only the
sorted half. Evaluation greedily sorts held-out sequences (never seen in training: the
digit sequences are split 3:1 by a fixed hash) and reports `sort_exact_match`.
minGPT: AdamW lr 5e-4 constant, betas 0.9/0.95, wd 0.1, clip 1.0, batch 64, dropout 0.1.
Measured on the 2-core dev CPU: sort_exact_match 1.000 on 500 held-out sequences already
at step 500 (and at 1000/1500/2000); the 2000 steps took 94 s wall on a heavily shared machine.
"""
from jaxmodels.config import ConfigError
from jaxmodels.data.text import lm_data_config
from jaxmodels.tasks.lm import lm_task_config, model_section
from jaxmodels.train.defaults import base_config

VARIANTS = ("smoke",)


def get_config(arg=None):
    if arg not in (None,) + VARIANTS:
        raise ConfigError(f"unknown variant {arg!r} of mingpt_sort.py; valid: {', '.join(VARIANTS)}")
    length, digits = 6, 3
    c = base_config()
    # gpt-nano: 3 layers, 3 heads, 48 wide, tanh GELU, biases, minGPT's dropout 0.1.
    c.model = model_section("gpt", "gpt-nano", vocab_size=digits, block_size=2 * length - 1,
                            dtype="float32", remat="none")
    c.task = lm_task_config(eval_examples=500)
    c.data = lm_data_config(source="sort", sort_length=length, sort_digits=digits, num_threads=1)
    c.optim.update(lr=5e-4, min_lr=5e-4, warmup_steps=0, schedule="constant", b1=0.9, b2=0.95,
                   weight_decay=0.1, clip_norm=1.0)
    c.train.update(steps=2000, batch_size=64, log_every=100, eval_every=500, eval_batches=4,
                   checkpoint_every=500)
    c.memory.check = False
    if arg == "smoke":
        c.train.update(steps=20, batch_size=16, log_every=5, eval_every=10, eval_batches=2,
                       checkpoint_every=10, progress=False)
        c.task.eval_examples = 64
    return c
