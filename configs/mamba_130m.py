"""Mamba-130M language-model pretraining (Gu & Dao 2023, state-spaces/mamba-130m).

    python -m launch.train --config configs/mamba_130m.py \
        --config.data.path=<folder of .txt files> --config.data.vocab_path=<folder with tokenizer.json>
    python -m launch.memory --config configs/mamba_130m.py      # does it fit 12 GB?
    python -m launch.train --config configs/mamba_130m.py:smoke # tiny, embedded corpus, ~20 steps

Model: 24 layers, d_model 768, d_state 16, expand 2, d_conv 4, vocab 50280 (GPT-NeoX's 50277
padded to a multiple of 8), tied head, residual in f32. Recipe of the paper's scaling runs
(its GPT-3-style 125M setting): context 2048, 0.5M tokens per step (256 sequences, here 32
micro-batches of 8), AdamW lr 6e-4 with betas 0.9/0.95, weight decay 0.1, clip 1.0, linear
warmup then cosine to 1e-5, bf16 compute; 4800 steps = ~2.5B tokens (Chinchilla-sized for
130M; the released checkpoint saw 300B tokens of the Pile). The tokenizer is GPT-NeoX's
(EleutherAI/gpt-neox-20b tokenizer.json, read locally through `tokenizer="hf"`).
`launch.memory` (compiled for CPU, i.e. the sequential scan) estimates 10.1 GiB per step
(8.7 GiB activations + temp, most of it the f32 logits [8, 2048, 50280] and their gradient).
"""
from jaxmodels.config import ConfigError
from jaxmodels.data.text import lm_data_config
from jaxmodels.tasks.lm import lm_task_config, model_section, smoke_run
from jaxmodels.train.defaults import base_config

VARIANTS = ("smoke",)


def get_config(arg=None):
    if arg not in (None,) + VARIANTS:
        raise ConfigError(f"unknown variant {arg!r} of mamba_130m.py; valid: {', '.join(VARIANTS)}")
    c = base_config()
    c.model = model_section("mamba", "mamba-130m", dtype="bfloat16", remat="nothing_saveable",
                            scan_mode="auto", scan_chunk=64)
    c.task = lm_task_config(sample_tokens=64, sample_prompt=16)
    c.data = lm_data_config(
        source="file", path="data/pile_text", tokenizer="hf", vocab_path="data/gpt-neox-20b",
        seq_len=2048, max_bytes=0,
        path_help="Point --config.data.path at a text file or folder of .txt files (the paper used the Pile) "
                  "and --config.data.vocab_path at a folder holding GPT-NeoX's tokenizer.json.")
    c.optim.update(lr=6e-4, min_lr=1e-5, warmup_steps=480, schedule="cosine", decay_steps=-1,
                   b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1, clip_norm=1.0)
    c.train.update(steps=4800, batch_size=256, micro_batches=32, log_every=10, eval_every=250,
                   eval_batches=20, checkpoint_every=500)
    if arg == "smoke":
        c.model.update(d_model=32, n_layer=2, d_state=4, vocab_size=256, dtype="float32", remat="none",
                       scan_chunk=8)
        smoke_run(c)
    return c
