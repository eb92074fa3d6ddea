"""A CPU-sized Stable Diffusion VAE (AutoencoderKL) trained from scratch on an image folder:
32x32 RGB -> 8x8x4 latents (/4), the first stage of a light latent diffusion.

    python -m launch.train --config configs/vae_small.py --config.data.path=data/my_images
    python -m launch.encode --images data/my_images --vae runs/vae_small --out data/my_latents --image-size 32
    python -m launch.train --config configs/vae_small.py:smoke     # tiny, on the generated shapes

The loss is SD's first-stage recipe without its LPIPS and GAN terms (tasks/autoencoder.py):
L1 reconstruction + KL weight 1e-6. Each evaluation writes runs/vae_small/samples/recon_*.png
(originals over reconstructions) and exports runs/vae_small/vae/, a diffusers AutoencoderKL
folder whose scaling_factor is 1 / std of the held-out latents (the LDM paper's rule);
`--vae runs/vae_small` (launch.encode) and `data.vae=runs/vae_small` (sampling) read it.
Adam lr 1e-3 with cosine decay (SD uses 4.5e-6 x batch for its much larger model and runs).
"""
from jaxmodels.config import ConfigError
from jaxmodels.data.images import image_data_config
from jaxmodels.tasks.autoencoder import autoencoder_task_config
from jaxmodels.train.defaults import base_config

VARIANTS = ("smoke",)


def get_config(arg=None):
    if arg not in (None,) + VARIANTS:
        raise ConfigError(f"unknown variant {arg!r} of vae_small.py; valid: {', '.join(VARIANTS)}")
    c = base_config()
    c.model = dict(name="vae", block_out_channels=(16, 32, 64), layers_per_block=1, latent_channels=4,
                   norm_num_groups=8, dtype="float32")
    c.task = autoencoder_task_config(reconstruction="l1", kl_weight=1e-6, eval_images=32)
    c.data = image_data_config(source="folder", path="data/my_images", image_size=32, flip=True, val_size=64,
                               num_threads=2, prefetch=4)
    c.optim.update(lr=1e-3, min_lr=1e-4, warmup_steps=20, schedule="cosine", b1=0.9, b2=0.99,
                   weight_decay=0.0, clip_norm=1.0)
    c.train.update(steps=1500, batch_size=16, log_every=50, eval_every=500, eval_batches=2,
                   checkpoint_every=500, ema_decay=0.0)
    c.memory.check = False
    if arg == "smoke":
        c.model.update(block_out_channels=(8, 16), norm_num_groups=4)
        c.data = image_data_config(image_size=16, flip=True, val_size=16, num_threads=1, prefetch=1)
        c.optim.update(lr=3e-3, min_lr=3e-3, warmup_steps=0, schedule="constant")
        c.train.update(steps=10, batch_size=8, log_every=5, eval_every=0, eval_batches=1,
                       checkpoint_every=5, progress=False)
        c.task.update(eval_images=8)
    return c
