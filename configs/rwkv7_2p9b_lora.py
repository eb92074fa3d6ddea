"""LoRA / QLoRA / state tuning of RWKV-7 2.9B (L32-D2560, World vocab) on one card.

    python -m launch.train --config configs/rwkv7_2p9b_lora.py --config.init_from=<converted RWKV-7> \
        --config.data.path=<tokens.bin>
    python -m launch.memory --config configs/rwkv7_2p9b_lora.py          # LoRA, bf16 base
    python -m launch.memory --config configs/rwkv7_2p9b_lora.py:qlora    # NF4 base
    python -m launch.train --config configs/rwkv7_2p9b_lora.py:state     # state tuning only
    python -m launch.train --config configs/rwkv7_2p9b_lora.py:smoke     # tiny, embedded corpus

RWKV-PEFT's settings: LoRA rank 32 (alpha 32) on the time-mix receptance / key / value /
output and the channel-mix key / value; context 1024, micro-batch 1; the frozen base in
bf16 (`:qlora`: its Dense kernels in NF4). `:state` trains only the initial WKV state of
every layer (RWKV-PEFT "state tuning", 32 x 40 heads x 64 x 64 numbers).
`launch.memory` (compiled for CPU): 7.56 GiB (LoRA), 4.08 GiB (`:qlora`).
"""
from jaxmodels.config import ConfigError
from jaxmodels.data.text import lm_data_config
from jaxmodels.layers.adapters import adapters_config
from jaxmodels.tasks.lm import lm_task_config, model_section, smoke_run
from jaxmodels.train.defaults import base_config

VARIANTS = ("qlora", "state", "smoke", "qlora_smoke", "state_smoke")
TARGETS = "att/(receptance|key|value|output)|ffn/(key|value)"


def lora_finetune(c, size_fields: dict, arg):
    """The shared recipe (this file and rwkv7_7b_qlora.py)."""
    c.model = model_section("rwkv7", vocab_size=65536, dtype="bfloat16", remat="nothing_saveable",
                            wkv_mode="chunked", chunk_size=16, **size_fields)
    c.model.adapters = adapters_config(rank=32, alpha=32.0, targets=TARGETS, base_dtype="bfloat16")
    c.task = lm_task_config(sample_tokens=0, sample_prompt=16)
    c.data = lm_data_config(
        source="tokens", path="data/finetune_tokens.bin", tokenizer="byte", seq_len=1024, max_bytes=0,
        path_help="Point --config.data.path at raw uint16 World-tokenizer tokens (a binidx .bin).")
    c.optim.update(lr=1e-4, min_lr=1e-5, warmup_steps=20, schedule="cosine", decay_steps=-1,
                   b1=0.9, b2=0.99, eps=1e-8, weight_decay=0.0, clip_norm=1.0, kind="adamw8bit")
    c.train.update(steps=1000, batch_size=8, micro_batches=8, log_every=10, eval_every=200,
                   eval_batches=8, checkpoint_every=200)
    c.kernels.cross_entropy = "xla"
    if arg in ("qlora", "qlora_smoke"):
        c.model.adapters.quant = "nf4"
    if arg in ("state", "state_smoke"):
        c.model.adapters.update(rank=0, state_tuning=True)
        c.optim.update(lr=1.0, min_lr=0.01)   # RWKV-PEFT's state-tuning rate
    if arg is not None and arg.endswith("smoke"):
        c.model.update(d_model=32, head_size=8, n_layer=2, vocab_size=256, dtype="float32", remat="none",
                       chunk_size=8)
        c.model.adapters.update(rank=0 if arg == "state_smoke" else 4, base_dtype="float32")
        smoke_run(c)
        if arg == "state_smoke":
            c.optim.update(lr=0.1, min_lr=0.01)
    return c


def get_config(arg=None):
    if arg not in (None,) + VARIANTS:
        raise ConfigError(f"unknown variant {arg!r} of rwkv7_2p9b_lora.py; valid: {', '.join(VARIANTS)}")
    return lora_finetune(base_config(), dict(n_layer=32, d_model=2560), arg)
