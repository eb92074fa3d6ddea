"""RWKV-7 "Goose" L12-D768 on MiniPile, RWKV-LM's RWKV-v7/train_temp demo recipe.

    python -m launch.train --config configs/rwkv7_l12_d768.py --config.data.path=data/minipile.bin
    python -m launch.memory --config configs/rwkv7_l12_d768.py
    python -m launch.train --config configs/rwkv7_l12_d768.py:smoke # tiny, embedded corpus, ~20 steps

demo-training-run.sh: n_layer 12, n_embd 768, head size 64, ctx_len 512, micro_bsz 16,
lr 6e-4 -> 6e-5, warmup 10 steps, Adam betas 0.9/0.99, eps 1e-18, weight decay 0.001, bf16,
vocab 65536 (the RWKV "World" tokenizer), 1,498,226,207 tokens = 182,889 steps of 16 x 512.
The data is RWKV's pre-tokenized MiniPile (minipile.bin of the binidx pair: raw uint16 tokens,
read with source="tokens"); the World tokenizer is not bundled, so no text samples are written.
`launch.memory` (compiled for CPU) estimates 7.8 GiB per step.
"""
from jaxmodels.config import ConfigError
from jaxmodels.data.text import lm_data_config
from jaxmodels.tasks.lm import lm_task_config, model_section, smoke_run
from jaxmodels.train.defaults import base_config

VARIANTS = ("smoke",)


def get_config(arg=None):
    if arg not in (None,) + VARIANTS:
        raise ConfigError(f"unknown variant {arg!r} of rwkv7_l12_d768.py; valid: {', '.join(VARIANTS)}")
    c = base_config()
    c.model = model_section("rwkv7", "l12-d768", vocab_size=65536, dtype="bfloat16",
                            remat="nothing_saveable", wkv_mode="chunked", chunk_size=16)
    c.task = lm_task_config(sample_tokens=0, sample_prompt=16)
    c.data = lm_data_config(
        source="tokens", path="data/minipile.bin", tokenizer="byte", seq_len=512, max_bytes=0,
        path_help="RWKV-LM's demo-training-prepare.sh fetches MiniPile as minipile.bin/.idx (World "
                  "tokenizer); point --config.data.path at minipile.bin.")
    c.optim.update(lr=6e-4, min_lr=6e-5, warmup_steps=10, schedule="cosine", decay_steps=-1,
                   b1=0.9, b2=0.99, eps=1e-18, weight_decay=0.001, clip_norm=1.0)
    c.train.update(steps=182889, batch_size=16, micro_batches=1, log_every=10, eval_every=1000,
                   eval_batches=20, checkpoint_every=1000)
    if arg == "smoke":
        c.model.update(d_model=32, head_size=8, n_layer=2, vocab_size=256, dtype="float32", remat="none",
                       chunk_size=8)
        smoke_run(c)
        c.optim.update(eps=1e-8)
    return c
