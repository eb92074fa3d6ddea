"""DiT-B/2 on precomputed 32x32x4 VAE latents: the 12 GB GPU recipe (DiT paper, ImageNet 256).

The latents come from your own encoding (e.g. Stable Diffusion's VAE, as DiT does) stored as
an .npz with "latents" float [N,32,32,4] (unscaled VAE means) and "label" int [N]; they are
multiplied by the SD-VAE factor 0.18215 (data.latent_scale). Nothing is downloaded.

    python -m launch.memory --config configs/dit_b2.py          # fits 12 GB? (no data needed)
    python -m launch.train --config configs/dit_b2.py --config.data.path=data/imagenet256_latents.npz
    python -m launch.sample --workdir runs/dit_b2 --num 64 --cfg 4.0 --sampler ddim --steps 50

DiT recipe: AdamW lr 1e-4 constant, no weight decay, batch 256, EMA 0.9999, learned sigma,
linear schedule with T = 1000, class dropout 0.1 (for CFG). On a 12 GB card: bf16 compute,
params/optimizer in f32, blocks rematerialised (`nothing_saveable`) under nn.scan (scan_layers="auto":
the loop on a GPU, unrolled on a CPU).
Encode an image folder with `python -m launch.encode --images DIR --vae VAE --out LATENTS`
and train with --config.data.path=LATENTS --config.data.vae=VAE: samples then decode to PNG.
:cpu trains a CPU-sized DiT on such latents (16x16x4); :smoke is a 10-step check of the path.
"""
from jaxmodels.config import ConfigError
from jaxmodels.data.images import image_data_config
from jaxmodels.tasks.diffusion import diffusion_task_config
from jaxmodels.train.defaults import base_config

VARIANTS = ("cpu", "smoke")


def get_config(arg=None):
    if arg not in (None,) + VARIANTS:
        raise ConfigError(f"unknown variant {arg!r} of dit_b2.py; valid: {', '.join(VARIANTS)}")
    c = base_config()
    c.model = dict(name="dit", size="dit-b/2", num_classes=1000, class_dropout=0.1, learn_sigma=True,
                   dtype="bfloat16", remat="nothing_saveable", scan_layers="auto")
    c.task = diffusion_task_config(schedule="linear", num_timesteps=1000, prediction="eps",
                                   cfg_scale=4.0, sampler="ddim", sample_steps=50, eval_samples=64,
                                   eval_judge=False)
    c.data = image_data_config(source="arrays", path="data/imagenet256_latents.npz", image_size=32,
                               channels=4, num_classes=1000, latent_scale=0.18215, val_size=2048,
                               num_threads=4, prefetch=8)
    c.optim.update(lr=1e-4, min_lr=1e-4, warmup_steps=0, schedule="constant", b1=0.9, b2=0.999,
                   weight_decay=0.0, clip_norm=0.0)
    # 2 micro-batches of 128: one batch of 256 plans 12.99 GiB (BENCHMARKS.md), two fit in 8.2.
    c.train.update(steps=400_000, batch_size=256, micro_batches=2, log_every=100, eval_every=10_000,
                   eval_batches=8, checkpoint_every=5000, ema_decay=0.9999, ema_warmup=False)
    c.memory.budget_gb = 12.0
    if arg in ("cpu", "smoke"):
        # The same recipe CPU-sized, on 16x16x4 latents (128 px images through the SD VAE, or
        # 32 px through the test fixture's 2x VAE): a 4 x 128 DiT/2 with dit_small.py:cpu's
        # short-run choices (v-prediction on the cosine schedule, lr 1e-3 + cosine decay, a
        # warmed-up EMA, the class embedding at unit scale). :smoke is 2 x 32 for 10 steps.
        c.model.update(input_size=16, hidden_size=128, depth=4, num_heads=4, learn_sigma=False,
                       class_embed_std=1.0, dtype="float32", remat="none")
        c.task.update(schedule="cosine", prediction="v", sample_steps=25, eval_samples=64)
        c.data.update(path="data/my_latents", image_size=16, val_size=64, num_threads=2, prefetch=4)
        c.optim.update(lr=1e-3, min_lr=1e-4, warmup_steps=50, schedule="cosine", clip_norm=1.0)
        c.train.update(steps=2000, batch_size=32, micro_batches=1, log_every=25, eval_every=1000, eval_batches=2,
                       checkpoint_every=250, ema_decay=0.999, ema_warmup=True)
        c.memory.check = False
    if arg == "smoke":
        c.model.update(hidden_size=32, depth=2, num_heads=2)
        c.task.update(sample_steps=4, eval_samples=8)
        c.data.update(val_size=8, num_threads=1, prefetch=1)
        c.train.update(steps=10, batch_size=8, log_every=5, eval_every=0, eval_batches=0, checkpoint_every=5,
                       ema_decay=0.99, progress=False)
    return c
