"""GPT-2 124M pretraining as in llm.c's reproduction (train_gpt2.cu, the 124M recipe).

    python -m launch.train --config configs/gpt2_124m.py \
        --config.data.path=<folder of .txt files> --config.data.vocab_path=<folder with vocab.json, merges.txt>
    python -m launch.memory --config configs/gpt2_124m.py     # does it fit 12 GB?
    python -m launch.train --config configs/gpt2_124m.py:smoke  # tiny, embedded corpus, bytes

llm.c: 12 layers, 12 heads, 768 wide, context 1024, vocab padded to 50304, 524,288 tokens
per step (512 sequences of 1024), lr 6e-4 with 700 warmup steps decaying to 0, AdamW
betas 0.9/0.95, weight decay 0.1, clip 1.0, no dropout, bf16 compute. Here the 512 sequences
are 32 micro-batches of 16 so one step fits a 12 GB GPU: `launch.memory` (compiled for CPU)
estimates 10.4 GiB. The loss is computed from the final hidden states over vocabulary chunks
(jaxmodels/kernels/cross_entropy.py), so the f32 logits [micro, 1024, 50304] and their
gradient are never held whole; with the full-logits loss (--config.kernels.cross_entropy=dense)
micro-batches of 16 need 13.9 GiB and the recipe used 64 micro-batches of 8 (8.1 GiB).
The tokenizer is GPT-2's BPE from local vocab.json + merges.txt (the Hugging Face `gpt2`
folder has them); nothing is downloaded. Tokenizing is pure Python (BPE merges cached per
distinct word), done once and cached as uint16 tokens; for corpora of many GB, tokenize
elsewhere and use --config.data.source=tokens (nanoGPT's train.bin/val.bin, llm.c shards).
"""
from jaxmodels.config import ConfigError
from jaxmodels.data.text import lm_data_config
from jaxmodels.tasks.lm import lm_task_config, model_section
from jaxmodels.train.defaults import base_config

VARIANTS = ("smoke",)


def get_config(arg=None):
    if arg not in (None,) + VARIANTS:
        raise ConfigError(f"unknown variant {arg!r} of gpt2_124m.py; valid: {', '.join(VARIANTS)}")
    c = base_config()
    # vocab 50257 padded to 50304, a multiple of 128 (llm.c, nanoGPT): faster matmuls.
    c.model = model_section("gpt", "gpt2", vocab_size=50304, dropout=0.0, dtype="bfloat16",
                            remat="dots_with_no_batch_dims_saveable")
    c.task = lm_task_config(sample_tokens=64, sample_prompt=16)
    c.data = lm_data_config(
        source="file", path="data/gpt2_text", tokenizer="gpt2", vocab_path="data/gpt2", seq_len=1024,
        max_bytes=0,
        path_help="Point --config.data.path at a text file or a folder of .txt files to pretrain on "
                  "(llm.c uses FineWeb), or use --config.data.source=tfds --config.data.tfds_name=<prepared dataset>.")
    # The chunked cross-entropy on every backend (auto picks dense on CPU, where it is
    # faster): the micro-batch of 16 fits 12 GB only without the full f32 logits.
    c.kernels.cross_entropy = "xla"
    c.optim.update(lr=6e-4, min_lr=0.0, warmup_steps=700, schedule="cosine", decay_steps=-1,
                   b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1, clip_norm=1.0)
    c.train.update(steps=18865, batch_size=512, micro_batches=32, log_every=10, eval_every=250,
                   eval_batches=20, checkpoint_every=500)
    if arg == "smoke":
        c.model.update(n_layer=2, n_head=2, n_embd=32, block_size=32, vocab_size=256, dtype="float32")
        c.data.update(source="embedded", path="", tokenizer="byte", vocab_path="", seq_len=32,
                      max_bytes=300_000)
        c.optim.update(lr=3e-3, warmup_steps=5, min_lr=3e-4)
        c.train.update(steps=20, batch_size=8, micro_batches=2, log_every=5, eval_every=10,
                       eval_batches=2, checkpoint_every=10, progress=False)
        c.task.update(sample_tokens=16, sample_prompt=8)
        c.memory.check = False
        c.kernels.cross_entropy = "auto"  # a CPU-sized run: whichever loss is faster here
    return c
