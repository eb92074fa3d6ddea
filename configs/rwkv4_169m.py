"""RWKV-4 169M (L12-D768) language-model pretraining after RWKV-LM's RWKV-v4neo Pile runs.

    python -m launch.train --config configs/rwkv4_169m.py \
        --config.data.path=<folder of .txt files> --config.data.vocab_path=<folder with tokenizer.json>
    python -m launch.memory --config configs/rwkv4_169m.py
    python -m launch.train --config configs/rwkv4_169m.py:smoke # tiny, embedded corpus, ~20 steps

Model: 12 layers, 768 wide, FFN 4x with squared ReLU, vocab 50277 (GPT-NeoX "20B" tokenizer),
untied head, RWKV-LM init. Recipe (v4neo defaults for the Pile models): context 1024, Adam
betas 0.9/0.99, eps 1e-8, lr 6e-4 decaying to 1e-5, no weight decay, bf16; batch 64 x 1024
here (8 micro-batches of 8). The WKV runs through jaxmodels.scan's running-max form
(sequential on CPU, chunked on GPU with `scan_mode="auto"`). `launch.memory` (compiled for
CPU) estimates 6.8 GiB per step.
"""
from jaxmodels.config import ConfigError
from jaxmodels.data.text import lm_data_config
from jaxmodels.tasks.lm import lm_task_config, model_section, smoke_run
from jaxmodels.train.defaults import base_config

VARIANTS = ("smoke",)


def get_config(arg=None):
    if arg not in (None,) + VARIANTS:
        raise ConfigError(f"unknown variant {arg!r} of rwkv4_169m.py; valid: {', '.join(VARIANTS)}")
    c = base_config()
    c.model = model_section("rwkv4", "169m", vocab_size=50277, dtype="bfloat16", remat="nothing_saveable")
    c.task = lm_task_config(sample_tokens=64, sample_prompt=16)
    c.data = lm_data_config(
        source="file", path="data/pile_text", tokenizer="hf", vocab_path="data/gpt-neox-20b",
        seq_len=1024, max_bytes=0,
        path_help="Point --config.data.path at a text file or folder of .txt files (RWKV-4 used the Pile) "
                  "and --config.data.vocab_path at a folder holding the GPT-NeoX tokenizer.json.")
    c.optim.update(lr=6e-4, min_lr=1e-5, warmup_steps=0, schedule="cosine", decay_steps=-1,
                   b1=0.9, b2=0.99, eps=1e-8, weight_decay=0.0, clip_norm=1.0)
    c.train.update(steps=20000, batch_size=64, micro_batches=8, log_every=10, eval_every=500,
                   eval_batches=20, checkpoint_every=1000)
    if arg == "smoke":
        c.model.update(d_model=32, n_layer=2, vocab_size=256, dtype="float32", remat="none", scan_chunk=8)
        smoke_run(c)
    return c
