"""A light Stable Diffusion: the U-Net with text cross-attention on VAE latents of captioned
images, trained from scratch (as nano-diffusion / diffusers' text-to-image examples do).

Prepare the data once: captions are the <image>.txt files beside the images; latents come
from Stable Diffusion's VAE and caption embeddings from its CLIP text encoder (77 x 768),
so neither sits beside the U-Net during training:

    python -m launch.encode --images data/my_captioned_images --image-size 256 --flip both \
        --vae models/sd-vae-ft-mse --captions models/clip-vit-large-patch14 --out data/sd_latents
    python -m launch.train --config configs/sd_light.py --config.data.path=data/sd_latents \
        --config.data.vae=models/sd-vae-ft-mse
    python -m launch.sample --workdir runs/sd_light --num 16 --cfg 7.5 --sampler ddim --steps 50
    python -m launch.train --config configs/sd_light.py:smoke     # tiny, on the generated captioned shapes

The U-Net (ch 192, mult 1,2,4, 2 ResBlocks per level, attention + cross-attention at latent
resolutions 16 and 8) has 164M parameters, about 1/5 of SD 1.x's 860M; `launch.memory` plans
9.2 of 12 GiB at batch 64 in 2 micro-batches (BENCHMARKS.md). SD's recipe otherwise: eps prediction,
scaled-linear betas (SD: linear in sqrt(beta), here the linear schedule), latent scale
0.18215, caption dropout 0.1 for guidance 7.5, AdamW lr 1e-4.
"""
from jaxmodels.config import ConfigError
from jaxmodels.data.images import image_data_config
from jaxmodels.tasks.diffusion import diffusion_task_config
from jaxmodels.train.defaults import base_config

VARIANTS = ("smoke",)
CLIP_LEN, CLIP_DIM = 77, 768


def get_config(arg=None):
    if arg not in (None,) + VARIANTS:
        raise ConfigError(f"unknown variant {arg!r} of sd_light.py; valid: {', '.join(VARIANTS)}")
    c = base_config()
    c.model = dict(name="unet", input_size=32, in_channels=4, model_channels=192, channel_mult=(1, 2, 4),
                   num_res_blocks=2, attention_resolutions=(16, 8), num_head_channels=64,
                   use_scale_shift_norm=False, dropout=0.0, conditioning="text", text_encoder="precomputed",
                   text_len=CLIP_LEN, text_dim=CLIP_DIM, context_dim=CLIP_DIM, caption_dropout=0.1,
                   dtype="bfloat16", remat="nothing_saveable")
    c.task = diffusion_task_config(schedule="linear", num_timesteps=1000, prediction="eps", cfg_scale=7.5,
                                   sampler="ddim", sample_steps=50, eval_samples=16, eval_judge=False)
    c.data = image_data_config(source="arrays", path="data/sd_latents", image_size=32, channels=4, text=True,
                               text_emb_shape=(CLIP_LEN, CLIP_DIM), latent_scale=0.18215, val_size=256,
                               num_threads=4, prefetch=8)
    c.optim.update(lr=1e-4, min_lr=1e-4, warmup_steps=500, schedule="constant", b1=0.9, b2=0.999,
                   weight_decay=0.01, clip_norm=1.0)
    c.train.update(steps=100_000, batch_size=64, micro_batches=2, log_every=50, eval_every=5000, eval_batches=4,
                   checkpoint_every=2500, ema_decay=0.9999, ema_warmup=False)
    c.memory.budget_gb = 12.0
    if arg == "smoke":
        # No files: the generated captioned shapes in pixel space (16 px, 3 channels) with the
        # byte caption encoder; the latent + cached-CLIP path is the same model with
        # --config.data.* pointing at `launch.encode` output (tests/data/test_end_to_end.py).
        c.model.update(input_size=16, in_channels=3, model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                       attention_resolutions=(8,), num_head_channels=16, text_encoder="bytes", text_len=72,
                       context_dim=32, encoder_width=32, encoder_depth=1, encoder_heads=2, dtype="float32",
                       remat="none")
        c.data = image_data_config(image_size=16, text=True, caption_len=72, val_size=16, num_threads=1)
        c.optim.update(lr=1e-3, min_lr=1e-4, warmup_steps=2, schedule="cosine")
        c.train.update(steps=10, batch_size=8, micro_batches=1, log_every=5, eval_every=0, eval_batches=1,
                       checkpoint_every=5, ema_decay=0.99, ema_warmup=True, progress=False)
        c.task.update(sample_steps=4, eval_samples=8)
        c.memory.check = False
    return c
