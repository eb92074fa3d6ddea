"""The DDPM U-Net (35.7M, ch 128, mult 1,2,2,2, attention at 16x16) on 64x64 images.

Defaults to the embedded coloured-shapes dataset rendered at 64x64, class-conditional (the
U-Net adds a label embedding; CFG at sampling), so it runs with nothing to download; point
it at your own images with data.source=folder (one sub-folder per class) or a prepared
tfds dataset.

    python -m launch.train --config configs/unet_ddpm64.py
    python -m launch.train --config configs/unet_ddpm64.py --config.data.source=folder \
        --config.data.path=data/my_images --config.data.num_classes=<classes> --config.model.num_classes=<classes>
    python -m launch.train --config configs/unet_ddpm64.py:smoke      # tiny, ~10 steps (tests)
    python -m launch.sample --workdir runs/unet_ddpm64 --num 64 --cfg 3.0 --sampler ddim --steps 50

DDPM recipe: Adam lr 2e-4, warmup 5000, grad clip 1, dropout 0.1, linear betas, T = 1000,
eps prediction, EMA 0.9999 (batch 64 here: DDPM's 128 at 64x64 does not fit 12 GB in f32
without remat; bf16 + remat per ResBlock keeps it under the budget).
"""
from jaxmodels.config import ConfigError
from jaxmodels.data import glyphs
from jaxmodels.data.images import image_data_config
from jaxmodels.tasks.diffusion import diffusion_task_config
from jaxmodels.train.defaults import base_config

VARIANTS = ("smoke",)


def get_config(arg=None):
    if arg not in (None,) + VARIANTS:
        raise ConfigError(f"unknown variant {arg!r} of unet_ddpm64.py; valid: {', '.join(VARIANTS)}")
    c = base_config()
    c.model = dict(name="unet", size="unet-ddpm64", conditioning="class", num_classes=glyphs.NUM_CLASSES,
                   class_dropout=0.1, dtype="bfloat16", remat="nothing_saveable")
    c.task = diffusion_task_config(schedule="linear", num_timesteps=1000, prediction="eps",
                                   cfg_scale=3.0, sampler="ddim", sample_steps=50, eval_samples=64)
    c.data = image_data_config(image_size=64)
    c.optim.update(lr=2e-4, min_lr=2e-4, warmup_steps=5000, schedule="constant", b1=0.9, b2=0.999,
                   weight_decay=0.0, clip_norm=1.0)
    # 2 micro-batches of 32: one batch of 64 plans 16.5 GiB (BENCHMARKS.md), two fit in 9.0.
    c.train.update(steps=200_000, batch_size=64, micro_batches=2, log_every=50, eval_every=10_000, eval_batches=4,
                   checkpoint_every=2500, ema_decay=0.9999, ema_warmup=False)
    if arg == "smoke":
        c.model = dict(name="unet", size="unet-tiny", conditioning="class", num_classes=glyphs.NUM_CLASSES,
                       dtype="float32", remat="none")
        c.data.update(image_size=16, val_size=16, num_threads=1)
        c.optim.update(lr=1e-3, min_lr=1e-4, warmup_steps=2, schedule="cosine")
        c.train.update(steps=10, batch_size=8, log_every=5, eval_every=0, eval_batches=1,
                       checkpoint_every=5, ema_decay=0.99, ema_warmup=True, progress=False)
        c.task.update(sample_steps=4, eval_samples=8, eval_judge=False)
        c.memory.check = False
    return c
