"""RetNet "base" (torchscale retnet_base: 6 layers, 512 wide, 2 heads) language modelling.

    python -m launch.train --config configs/retnet_base.py \
        --config.data.path=<folder of .txt files> --config.data.vocab_path=<folder with vocab.json, merges.txt>
    python -m launch.memory --config configs/retnet_base.py
    python -m launch.train --config configs/retnet_base.py:smoke  # tiny, embedded corpus, ~20 steps

torchscale's retnet_base: d_model 512, value/FFN width 864, 2 retention heads (key head dim
256), GLU FFN with swish, RMSNorm, embeddings scaled by sqrt(d), untied output. Training
follows the paper's LM setup scaled down: context 2048, AdamW betas 0.9/0.98, weight decay
0.05, lr 6e-4 with 375 warmup steps, bf16, chunkwise retention (chunk 64). GPT-2 BPE
tokenizer from local vocab.json + merges.txt. `launch.memory` (compiled for CPU) estimates
7.9 GiB per step.
"""
from jaxmodels.config import ConfigError
from jaxmodels.data.text import lm_data_config
from jaxmodels.tasks.lm import lm_task_config, model_section, smoke_run
from jaxmodels.train.defaults import base_config

VARIANTS = ("smoke",)


def get_config(arg=None):
    if arg not in (None,) + VARIANTS:
        raise ConfigError(f"unknown variant {arg!r} of retnet_base.py; valid: {', '.join(VARIANTS)}")
    c = base_config()
    c.model = model_section("retnet", "base", vocab_size=50257, dtype="bfloat16", remat="nothing_saveable",
                            retention_mode="chunkwise", chunk_size=64)
    c.task = lm_task_config(sample_tokens=64, sample_prompt=16)
    c.data = lm_data_config(
        source="file", path="data/gpt2_text", tokenizer="gpt2", vocab_path="data/gpt2", seq_len=2048,
        max_bytes=0,
        path_help="Point --config.data.path at a text file or folder of .txt files and "
                  "--config.data.vocab_path at a folder with GPT-2's vocab.json + merges.txt.")
    c.optim.update(lr=6e-4, min_lr=6e-5, warmup_steps=375, schedule="cosine", decay_steps=-1,
                   b1=0.9, b2=0.98, eps=1e-8, weight_decay=0.05, clip_norm=1.0)
    c.train.update(steps=20000, batch_size=64, micro_batches=8, log_every=10, eval_every=500,
                   eval_batches=20, checkpoint_every=1000)
    if arg == "smoke":
        c.model.update(d_model=32, n_layer=2, n_head=2, d_value=48, d_ffn=64, vocab_size=256,
                       dtype="float32", remat="none", chunk_size=8)
        smoke_run(c)
    return c
