"""QLoRA on a Mixtral-style MoE (every FFN = 8 SwiGLU experts, top-2) within a 12 GB GPU.

    python -m launch.memory --config configs/mixtral_qlora.py                  # fits? (abstract shapes)
    python -m launch.train --config configs/mixtral_qlora.py --config.init_from=/path/to/mixtral-style-hf \\
        --config.data.vocab_path=/path/to/mixtral-style-hf --config.data.path=alpaca_data.json
    # fine-tune a Frankenstein MoE (python -m launch.merge_moe ... --out frankenmoe) the same way:
    python -m launch.train --config configs/mixtral_qlora.py:frankenmoe --config.init_from=frankenmoe \\
        --config.data.vocab_path=frankenmoe  <plus --config.model.* matching the merged base>
    python -m launch.train --config configs/mixtral_qlora.py:smoke             # tiny, CPU (tests)

Every frozen projection, the stacked experts included, is NF4 (jaxmodels.layers.quant,
~0.52 byte/param); a layer's experts are de-quantised (bf16) for its grouped matmul and,
with remat, again in the backward pass. The router stays f32 and frozen; LoRA (r=16) on
the attention projections trains. The model is Mixtral's block at the largest size this
config fits in 12 GB of the sizes tried (launch.memory, XLA:CPU compile): 32 layers, 2048
wide, 8 experts of 5632 (9.39B params, 2.75B active per token), sequence 512, micro-batches
of 2: 10.54 GiB (24 layers: 9.33 GiB). Mixtral 8x7B itself (46.7B params, ~24 GB in NF4)
does not fit a 12 GB card.
"""
from jaxmodels.config import ConfigError
from jaxmodels.data.instruct import instruct_data_config
from jaxmodels.tasks.lm import lm_task_config, model_section
from jaxmodels.train.defaults import base_config

VARIANTS = ("frankenmoe", "smoke")
MIXTRAL_STYLE = dict(vocab_size=32000, dim=2048, n_layers=32, n_heads=16, n_kv_heads=8, hidden_dim=5632,
                     max_len=4096, rope_theta=1e6, norm_eps=1e-5, moe_experts=8, moe_top_k=2,
                     moe_router="mixtral", moe_dispatch="dropless", moe_aux_weight=0.0, moe_z_weight=0.0)


def get_config(arg=None):
    if arg not in (None,) + VARIANTS:
        raise ConfigError(f"unknown variant {arg!r} of mixtral_qlora.py; valid: {', '.join(VARIANTS)}")
    c = base_config()
    c.model = model_section("llama", "", lora_rank=16, lora_alpha=32.0, lora_dropout=0.05,
                            lora_targets=("q", "k", "v", "o"), quant="nf4", dtype="bfloat16",
                            remat="nothing_saveable", scan_layers=True, **MIXTRAL_STYLE)
    c.task = lm_task_config(sample_tokens=64, sample_prompt=32)
    c.data = instruct_data_config(tokenizer="hf", vocab_path="", path="", template="alpaca",
                                  seq_len=512, packing=False)
    c.optim.update(lr=2e-4, min_lr=2e-5, warmup_steps=50, schedule="cosine", decay_steps=-1,
                   b1=0.9, b2=0.999, weight_decay=0.0, clip_norm=1.0)
    c.train.update(steps=1000, batch_size=16, micro_batches=8, log_every=10, eval_every=200,
                   eval_batches=10, checkpoint_every=200, max_to_keep=2)
    c.memory.update(budget_gb=12.0, check=True)
    if arg == "frankenmoe":
        # A merged MoE's routers come from prompts: train the attention adapters at a lower
        # rate so the routing the gates encode is not washed out early.
        c.optim.update(lr=1e-4, min_lr=1e-5)
    if arg == "smoke":
        c.model.update(vocab_size=256, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=48,
                       max_len=128, moe_experts=4, dtype="float32", remat="none", lora_rank=4)
        c.data = instruct_data_config(template="short", seq_len=64, num_examples=64, packing=False)
        c.optim.update(lr=1e-2, min_lr=1e-3, warmup_steps=5)
        c.train.update(steps=20, batch_size=8, micro_batches=1, log_every=5, eval_every=10,
                       eval_batches=1, checkpoint_every=10, progress=False)
        c.memory.check = False
    return c
