"""QLoRA fine-tuning of LLaMA-2-7B on instruction data within a 12 GB GPU (Dettmers et al. 2023).

    python -m launch.memory --config configs/llama2_7b_qlora.py          # fits? (abstract shapes)
    python -m launch.train --config configs/llama2_7b_qlora.py \
        --config.init_from=/path/to/Llama-2-7b-hf \
        --config.data.vocab_path=/path/to/Llama-2-7b-hf --config.data.path=alpaca_data.json
    python -m launch.merge_lora --workdir runs/llama2_7b_qlora --out merged-7b   # HF folder

The frozen base projections are NF4 (block 64, double-quantised scales: ~0.52 byte/param),
de-quantised inside each matmul in bf16; embedding and head stay f32 and frozen; LoRA
(r=16, alpha=32) on every projection trains in f32 with AdamW. Sequence 512, micro-batch
2 with 8-way accumulation (16 examples per step), remat of each block (nothing saved).
data.path="" trains on the embedded toy set (only to check the pipeline).
"""
from jaxmodels.config import ConfigError
from jaxmodels.data.instruct import instruct_data_config
from jaxmodels.tasks.lm import lm_task_config, model_section
from jaxmodels.train.defaults import base_config

TARGETS = ("q", "k", "v", "o", "gate", "up", "down")


def get_config(arg=None):
    if arg is not None:
        raise ConfigError(f"llama2_7b_qlora.py has no variants (got {arg!r})")
    c = base_config()
    c.model = model_section("llama", "llama-2-7b", lora_rank=16, lora_alpha=32.0, lora_dropout=0.05,
                            lora_targets=TARGETS, quant="nf4", dtype="bfloat16",
                            remat="nothing_saveable", scan_layers=True)
    c.task = lm_task_config(sample_tokens=64, sample_prompt=32)
    c.data = instruct_data_config(tokenizer="hf", vocab_path="", path="", template="alpaca",
                                  seq_len=512, packing=False)
    c.optim.update(lr=2e-4, min_lr=2e-5, warmup_steps=50, schedule="cosine", decay_steps=-1,
                   b1=0.9, b2=0.999, weight_decay=0.0, clip_norm=1.0)
    c.train.update(steps=1000, batch_size=16, micro_batches=8, log_every=10, eval_every=200,
                   eval_batches=10, checkpoint_every=200, max_to_keep=2)
    c.memory.update(budget_gb=12.0, check=True)
    return c
