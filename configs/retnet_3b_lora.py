"""LoRA / QLoRA fine-tuning of RetNet at the paper's 2.7B and 6.7B sizes on one 12 GB card.

    python -m launch.train --config configs/retnet_3b_lora.py --config.init_from=<RetNet weights> \
        --config.data.path=<text> --config.data.vocab_path=<folder with GPT-2's vocab.json, merges.txt>
    python -m launch.memory --config configs/retnet_3b_lora.py            # 2.7B LoRA, bf16 base
    python -m launch.memory --config configs/retnet_3b_lora.py:qlora      # 2.7B, NF4 base
    python -m launch.memory --config configs/retnet_3b_lora.py:7b_qlora   # 6.7B, NF4 base
    python -m launch.train --config configs/retnet_3b_lora.py:smoke       # tiny, embedded corpus

Sizes are torchscale's retnet_3b (32 layers, 2560 wide, 10 heads) and retnet_7b (32 x 4096,
16 heads), the paper's 2.7B and 6.7B. LoRA rank 16 (alpha 32) on every Dense (the q/k/v/g/o
projections and the GLU FFN), the rest of the base frozen in bf16; 8-bit AdamW for the
adapters; context 2048, micro-batch 1, layers rematerialised, chunkwise retention, the chunked
cross-entropy. `launch.memory` (compiled for CPU): 7.24 GiB (2.7B LoRA), 3.75 GiB (2.7B
QLoRA), 7.30 GiB (6.7B QLoRA); BENCHMARKS.md, "Largest size in 12 GB".
"""
from jaxmodels.config import ConfigError
from jaxmodels.data.text import lm_data_config
from jaxmodels.layers.adapters import adapters_config
from jaxmodels.tasks.lm import lm_task_config, model_section, smoke_run
from jaxmodels.train.defaults import base_config

VARIANTS = ("qlora", "7b_qlora", "smoke")


def get_config(arg=None):
    if arg not in (None,) + VARIANTS:
        raise ConfigError(f"unknown variant {arg!r} of retnet_3b_lora.py; valid: {', '.join(VARIANTS)}")
    c = base_config()
    c.model = model_section("retnet", "7b" if arg == "7b_qlora" else "3b", vocab_size=50257,
                            dtype="bfloat16", remat="nothing_saveable", retention_mode="chunkwise",
                            chunk_size=64)
    c.model.adapters = adapters_config(rank=16, alpha=32.0, base_dtype="bfloat16")
    c.task = lm_task_config(sample_tokens=64, sample_prompt=16)
    c.data = lm_data_config(
        source="file", path="data/finetune_text", tokenizer="gpt2", vocab_path="data/gpt2", seq_len=2048,
        max_bytes=0,
        path_help="Point --config.data.path at a text file or folder of .txt files and "
                  "--config.data.vocab_path at a folder with GPT-2's vocab.json + merges.txt.")
    c.optim.update(lr=2e-4, min_lr=2e-5, warmup_steps=20, schedule="cosine", decay_steps=-1,
                   b1=0.9, b2=0.98, weight_decay=0.0, clip_norm=1.0, kind="adamw8bit")
    c.train.update(steps=1000, batch_size=8, micro_batches=8, log_every=10, eval_every=200,
                   eval_batches=8, checkpoint_every=200)
    c.kernels.cross_entropy = "xla"
    if arg in ("qlora", "7b_qlora"):
        c.model.adapters.quant = "nf4"
    if arg == "smoke":
        c.model.update(d_model=32, n_layer=2, n_head=2, d_value=48, d_ffn=64, vocab_size=256,
                       dtype="float32", remat="none", chunk_size=8)
        c.model.adapters.update(rank=4, alpha=8.0, base_dtype="float32", quant="nf4")
        smoke_run(c)
    return c
