"""QLoRA of a 7B-class RWKV-7 (L32-D4096, World vocab: the RWKV7-G1 7.2B shape) in 10 GB.

    python -m launch.memory --config configs/rwkv7_7b_qlora.py
    python -m launch.train --config configs/rwkv7_7b_qlora.py --config.init_from=<converted RWKV-7> \
        --config.data.path=<tokens.bin>

The recipe of configs/rwkv7_2p9b_lora.py (LoRA rank 32 on the time-mix r/k/v/o and the
channel-mix k/v, context 1024, micro-batch 1) with every block Dense in NF4 and the rest of
the frozen base in bf16. `launch.memory` (compiled for CPU): 7.85 GiB.
"""
from jaxmodels.config import ConfigError
from jaxmodels.train.defaults import base_config

VARIANTS = ("smoke",)


def get_config(arg=None):
    from configs.rwkv7_2p9b_lora import lora_finetune

    if arg not in (None,) + VARIANTS:
        raise ConfigError(f"unknown variant {arg!r} of rwkv7_7b_qlora.py; valid: {', '.join(VARIANTS)}")
    c = lora_finetune(base_config(), dict(n_layer=32, d_model=4096), "qlora" if arg is None else "qlora_smoke")
    return c
