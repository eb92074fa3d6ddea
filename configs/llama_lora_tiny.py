"""LoRA on a tiny random LLaMA that trains on CPU in a minute, on the embedded instruction set.

    python -m launch.train --config configs/llama_lora_tiny.py            # LoRA, f32 base
    python -m launch.train --config configs/llama_lora_tiny.py:qlora      # NF4 base (QLoRA)
    python -m launch.train --config configs/llama_lora_tiny.py:smoke      # ~20 steps (tests)
    python -m launch.merge_lora --workdir runs/llama_lora_tiny --out /tmp/merged   # HF folder

The base is random (no download needed): the run shows that only the adapters train and
the masked response loss falls. Any small HF LLaMA folder works as base instead:
    --config.init_from=<folder> plus its sizes (python -m launch.convert --hf <folder> prints them)
    and --config.data.tokenizer=hf --config.data.vocab_path=<folder>.
"""
from jaxmodels.config import ConfigError
from jaxmodels.data.instruct import instruct_data_config
from jaxmodels.tasks.lm import lm_task_config, model_section
from jaxmodels.train.defaults import base_config

VARIANTS = ("qlora", "smoke")
ALL_TARGETS = ("q", "k", "v", "o", "gate", "up", "down", "head")


def get_config(arg=None):
    if arg not in (None,) + VARIANTS:
        raise ConfigError(f"unknown variant {arg!r} of llama_lora_tiny.py; valid: {', '.join(VARIANTS)}")
    c = base_config()
    # Byte-level vocab (256) so the embedded data needs no tokenizer files.
    c.model = model_section("llama", vocab_size=256, dim=64, n_layers=2, n_heads=4, n_kv_heads=2,
                            hidden_dim=128, max_len=128, lora_rank=8, lora_alpha=16.0,
                            lora_dropout=0.0, lora_targets=ALL_TARGETS, quant="none",
                            dtype="float32", remat="none", scan_layers=True)
    c.task = lm_task_config(sample_tokens=16, sample_prompt=16)
    c.data = instruct_data_config(template="short", seq_len=64, num_examples=64, packing=False)
    c.optim.update(lr=1e-2, min_lr=1e-3, warmup_steps=10, schedule="cosine", decay_steps=-1,
                   b1=0.9, b2=0.999, weight_decay=0.0, clip_norm=1.0)
    c.train.update(steps=150, batch_size=8, micro_batches=1, log_every=10, eval_every=50,
                   eval_batches=1, checkpoint_every=50, progress=False)
    c.memory.check = False
    if arg == "qlora":
        c.model.quant = "nf4"
    if arg == "smoke":
        c.train.update(steps=20, log_every=5, eval_every=10, checkpoint_every=10)
    return c
