"""Full training of GPT-2 large (774M) aimed at 12 GB: 8-bit AdamW moments, rematerialised layers.

    python -m launch.memory --config configs/gpt2_large_8bit.py
    python -m launch.train --config configs/gpt2_large_8bit.py --config.data.path=<text>
    python -m launch.train --config configs/gpt2_large_8bit.py:smoke   # tiny, embedded corpus

f32 params (3.1 GB) + f32 gradients (3.1 GB) + both Adam moments in 8 bits (1.6 GB instead
of 6.2 GB; jaxmodels/train/adam8bit.py, whose fused step writes the params leaf by leaf
with no full-size update tree); context 1024, micro-batch 1, bf16 compute, the chunked
cross-entropy. nanoGPT's GPT-2 recipe otherwise (lr 6e-4 -> 6e-5, betas 0.9/0.95, weight
decay 0.1). `launch.memory` (compiled for CPU) plans 11.30 GiB with the 32-way accumulation
and 8.44 GiB at batch 1; --config.optim.param_dtype=bfloat16 (bf16 params, stochastic
rounding) 8.56 / 6.40 GiB (BENCHMARKS.md, "Largest size in 12 GB").
"""
from jaxmodels.config import ConfigError
from jaxmodels.data.text import lm_data_config
from jaxmodels.tasks.lm import lm_task_config, model_section, smoke_run
from jaxmodels.train.defaults import base_config

VARIANTS = ("smoke",)


def get_config(arg=None):
    if arg not in (None,) + VARIANTS:
        raise ConfigError(f"unknown variant {arg!r} of gpt2_large_8bit.py; valid: {', '.join(VARIANTS)}")
    c = base_config()
    c.model = model_section("gpt", "gpt2-large", dtype="bfloat16", remat="nothing_saveable", dropout=0.0)
    c.task = lm_task_config(sample_tokens=64, sample_prompt=16)
    c.data = lm_data_config(source="file", path="data/gpt2_text", tokenizer="gpt2", vocab_path="data/gpt2", seq_len=1024,
                            max_bytes=0, path_help="Point --config.data.path at a text file or folder of .txt files.")
    c.optim.update(lr=6e-4, min_lr=6e-5, warmup_steps=700, schedule="cosine", decay_steps=-1,
                   b1=0.9, b2=0.95, weight_decay=0.1, clip_norm=1.0, kind="adamw8bit")
    c.train.update(steps=20000, batch_size=32, micro_batches=32, log_every=10, eval_every=500,
                   eval_batches=20, checkpoint_every=1000)
    c.kernels.cross_entropy = "xla"
    if arg == "smoke":
        c.model.update(n_layer=2, n_head=2, n_embd=64, vocab_size=256, block_size=64, dtype="float32",
                       remat="none")
        smoke_run(c)
    return c
