"""A 64x64 pixel-space U-Net on your own image folder, unconditional (diffusers'
unconditional image-generation training example, with the DDPM U-Net of unet_ddpm64.py).

    python -m launch.train --config configs/unet_folder64.py --config.data.path=data/my_images
    python -m launch.sample --workdir runs/unet_folder64 --num 64 --sampler ddim --steps 50
    python -m launch.evaluate --fid --workdir runs/unet_folder64 --ref data/my_images \
        --inception fid_inception.safetensors
    python -m launch.train --config configs/unet_folder64.py:smoke   # tiny, on the generated shapes

data.path holds images in sub-folders (any names; labels are not used); each image is
resized (shorter side) and center-cropped to 64, flipped at random. diffusers' recipe:
AdamW lr 1e-4, warmup 500, batch 16, EMA 0.9999 (power warm-up), linear betas, T = 1000,
eps prediction.
"""
from jaxmodels.config import ConfigError
from jaxmodels.data.images import image_data_config
from jaxmodels.tasks.diffusion import diffusion_task_config
from jaxmodels.train.defaults import base_config

VARIANTS = ("smoke",)


def get_config(arg=None):
    if arg not in (None,) + VARIANTS:
        raise ConfigError(f"unknown variant {arg!r} of unet_folder64.py; valid: {', '.join(VARIANTS)}")
    c = base_config()
    c.model = dict(name="unet", size="unet-ddpm64", conditioning="none", dtype="bfloat16", remat="nothing_saveable")
    c.task = diffusion_task_config(conditioning="none", schedule="linear", num_timesteps=1000, prediction="eps",
                                   cfg_scale=1.0, sampler="ddim", sample_steps=50, eval_samples=64,
                                   eval_judge=False)
    c.data = image_data_config(source="folder", path="data/my_images", image_size=64, flip=True, val_size=64)
    c.optim.update(lr=1e-4, min_lr=1e-4, warmup_steps=500, schedule="constant", b1=0.95, b2=0.999,
                   weight_decay=1e-6, clip_norm=1.0)
    c.train.update(steps=50_000, batch_size=16, log_every=50, eval_every=5000, eval_batches=4,
                   checkpoint_every=1000, ema_decay=0.9999, ema_warmup=True)
    if arg == "smoke":
        c.model = dict(name="unet", size="unet-tiny", conditioning="none", dtype="float32", remat="none")
        c.data = image_data_config(image_size=16, flip=True, val_size=16, num_threads=1)
        c.optim.update(lr=1e-3, min_lr=1e-4, warmup_steps=2, schedule="cosine")
        c.train.update(steps=10, batch_size=8, log_every=5, eval_every=0, eval_batches=1,
                       checkpoint_every=5, ema_decay=0.99, progress=False)
        c.task.update(sample_steps=4, eval_samples=8)
        c.memory.check = False
    return c
