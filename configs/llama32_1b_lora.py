"""LoRA fine-tuning of Llama-3.2-1B on instruction data (fits a 12 GB GPU in bf16 without quantisation).

    python -m launch.memory --config configs/llama32_1b_lora.py
    python -m launch.train --config configs/llama32_1b_lora.py \
        --config.init_from=/path/to/Llama-3.2-1B \
        --config.data.vocab_path=/path/to/Llama-3.2-1B --config.data.path=alpaca_data.json
    python -m launch.train --config configs/llama32_1b_lora.py:qlora ...   # NF4 base
    python -m launch.merge_lora --workdir runs/llama32_1b_lora --out merged-1b

f32 frozen base (tied embedding/head, llama3 rope scaling), LoRA r=16, alpha=32 on every
projection, bf16 compute, sequence 512, micro-batch 4 with 4-way accumulation.
"""
from jaxmodels.config import ConfigError
from jaxmodels.data.instruct import instruct_data_config
from jaxmodels.tasks.lm import lm_task_config, model_section
from jaxmodels.train.defaults import base_config

TARGETS = ("q", "k", "v", "o", "gate", "up", "down")
VARIANTS = ("qlora",)


def get_config(arg=None):
    if arg not in (None,) + VARIANTS:
        raise ConfigError(f"unknown variant {arg!r} of llama32_1b_lora.py; valid: {', '.join(VARIANTS)}")
    c = base_config()
    c.model = model_section("llama", "llama-3.2-1b", lora_rank=16, lora_alpha=32.0, lora_dropout=0.05,
                            lora_targets=TARGETS, quant="nf4" if arg == "qlora" else "none",
                            dtype="bfloat16", remat="nothing_saveable", scan_layers=True)
    c.task = lm_task_config(sample_tokens=64, sample_prompt=32)
    c.data = instruct_data_config(tokenizer="hf", vocab_path="", path="", template="alpaca",
                                  seq_len=512, packing=False)
    c.optim.update(lr=2e-4, min_lr=2e-5, warmup_steps=50, schedule="cosine", decay_steps=-1,
                   b1=0.9, b2=0.999, weight_decay=0.0, clip_norm=1.0)
    c.train.update(steps=1000, batch_size=16, micro_batches=4, log_every=10, eval_every=200,
                   eval_batches=10, checkpoint_every=200, max_to_keep=2)
    c.memory.update(budget_gb=12.0, check=True)
    return c
