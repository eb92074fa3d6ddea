"""LoRA fine-tuning of DiT-XL/2 (675M) on 256 px images (32x32x4 VAE latents) on one 12 GB card.

    python -m launch.train --config configs/dit_xl2_lora.py --config.init_from=<DiT-XL/2 weights> \
        --config.data.path=<latents .npz from launch.encode>
    python -m launch.memory --config configs/dit_xl2_lora.py       # the 12 GB check
    python -m launch.train --config configs/dit_xl2_lora.py:smoke  # tiny, 10 steps
    python -m launch.merge_adapters --workdir runs/dit_xl2_lora --out merged/   # a plain DiT

dit_b2.py's recipe (latents, linear schedule with T = 1000, learned sigma, class dropout 0.1
for CFG, bf16 compute, blocks rematerialised) at the XL/2 size, with LoRA rank 16 (alpha 16)
on every Dense inside the 28 blocks (attention q/k/v and output, the MLP, the per-block adaLN
modulation); the embedders and the final layer stay frozen, the whole frozen base in bf16.
8-bit AdamW for the adapters, no EMA (the adapters are the small thing that trains), batch
256 in 4 micro-batches of 64. `launch.memory` (compiled for CPU): 5.90 GiB (BENCHMARKS.md,
"Largest size in 12 GB": 2 micro-batches of 128 plan 10.28 GiB, 8 of 32 plan 3.71).
"""
from configs import dit_b2
from jaxmodels.config import ConfigError
from jaxmodels.layers.adapters import adapters_config

VARIANTS = ("smoke",)


def get_config(arg=None):
    if arg not in (None,) + VARIANTS:
        raise ConfigError(f"unknown variant {arg!r} of dit_xl2_lora.py; valid: {', '.join(VARIANTS)}")
    c = dit_b2.get_config(arg)
    c.model.size = "dit-xl/2"
    c.model.adapters = adapters_config(rank=16, alpha=16.0, targets="blocks/", base_dtype="bfloat16")
    c.optim.update(lr=1e-4, min_lr=1e-5, warmup_steps=50, schedule="cosine", decay_steps=-1,
                   clip_norm=1.0, kind="adamw8bit")
    c.train.update(steps=5000, batch_size=256, micro_batches=4, ema_decay=0.0, eval_every=1000,
                   checkpoint_every=1000)
    if arg == "smoke":
        c.model.adapters.update(rank=4, alpha=4.0, base_dtype="float32")
        c.train.update(steps=10, batch_size=4, micro_batches=1, eval_every=0, checkpoint_every=5)
    return c
