"""PixArt-α at 512 px on VAE latents with cached T5 caption embeddings: the 12 GB GPU plan.

PixArt-XL/2 (28 blocks, width 1152, 16 heads, 2x2 patches: 611M parameters) on 64x64x4
latents (512 px images through Stable Diffusion's VAE: 1024 tokens per image), cross-
attending to 120 x 4096 T5-XXL states. The 4.3B T5 encoder never sits beside the DiT:
encode the captions once, with the latents,

    python -m launch.encode --images data/my_captioned_images --image-size 512 \
        --vae models/sd-vae-ft-ema --captions models/t5-v1_1-xxl --out data/pixart512
    python -m launch.memory --config configs/pixart_alpha_512.py        # fits 12 GB? (no data needed)
    python -m launch.train --config configs/pixart_alpha_512.py --config.data.path=data/pixart512 \
        --config.data.vae=models/sd-vae-ft-ema

PixArt-α's 512 px recipe: AdamW lr 2e-5, weight decay 0.03, eps 1e-10, gradient clip 0.01,
1000 warm-up steps, learned sigma, linear schedule (T = 1000), eps prediction, caption
dropout 0.1 for guidance 4.5, gradient checkpointing, EMA 0.9999; it trains 38-40 images
per GPU. On a 12 GB card that recipe's f32 AdamW moments + f32 EMA + f32 params are 9.1 GiB
before a single activation and it does not fit at any micro-batch. This config therefore
swaps AdamW for Adafactor (factored second moment: 7 MiB of state; optim.kind) and takes
batch 32 in 8 micro-batches of 4: 11.2 of 12 GiB planned with the EMA, 9.0 without. The
closer alternative, 8-bit AdamW (`--config.optim.kind=adamw8bit`), fits with the EMA only at
micro-batches of 1 (`--config.train.micro_batches=32`: 10.95 GiB; 12.49 at micro-batch 4)
(BENCHMARKS.md, "DiT-XL/2 and PixArt-α 512 on latents"). :smoke is a 10-step check of the model on the
generated captioned shapes (16 px pixels, the byte caption encoder; no files).
"""
from jaxmodels.config import ConfigError
from jaxmodels.data.images import image_data_config
from jaxmodels.tasks.diffusion import diffusion_task_config
from jaxmodels.train.defaults import base_config

VARIANTS = ("smoke",)
T5_LEN, T5_DIM = 120, 4096


def get_config(arg=None):
    if arg not in (None,) + VARIANTS:
        raise ConfigError(f"unknown variant {arg!r} of pixart_alpha_512.py; valid: {', '.join(VARIANTS)}")
    c = base_config()
    c.model = dict(name="dit", size="pixart-xl/2", input_size=64, text_encoder="precomputed", text_len=T5_LEN,
                   text_dim=T5_DIM, caption_dropout=0.1, learn_sigma=True, dtype="bfloat16",
                   remat="nothing_saveable", scan_layers="auto")
    c.task = diffusion_task_config(schedule="linear", num_timesteps=1000, prediction="eps", cfg_scale=4.5,
                                   sampler="ddim", sample_steps=50, eval_samples=16, eval_judge=False)
    c.data = image_data_config(source="arrays", path="data/pixart512", image_size=64, channels=4, text=True,
                               text_emb_shape=(T5_LEN, T5_DIM), latent_scale=0.18215, val_size=256,
                               num_threads=4, prefetch=8)
    c.optim.update(lr=2e-5, min_lr=2e-5, warmup_steps=1000, schedule="constant", b1=0.9, b2=0.999, eps=1e-10,
                   weight_decay=0.03, clip_norm=0.01, kind="adafactor")
    c.train.update(steps=100_000, batch_size=32, micro_batches=8, log_every=50, eval_every=5000, eval_batches=4,
                   checkpoint_every=2500, ema_decay=0.9999, ema_warmup=False)
    c.memory.budget_gb = 12.0
    if arg == "smoke":
        c.model.update(size=None, input_size=16, patch_size=2, in_channels=3, hidden_size=32, depth=2,
                       num_heads=2, text_encoder="bytes", text_len=72, encoder_width=32, encoder_depth=1,
                       encoder_heads=2, learn_sigma=False, dtype="float32", remat="none")
        c.data = image_data_config(image_size=16, text=True, caption_len=72, val_size=16, num_threads=1)
        c.optim.update(lr=1e-3, min_lr=1e-4, warmup_steps=2, schedule="cosine", clip_norm=1.0, kind="adamw")
        c.train.update(steps=10, batch_size=8, micro_batches=1, log_every=5, eval_every=0, eval_batches=1,
                       checkpoint_every=5, ema_decay=0.99, ema_warmup=True, progress=False)
        c.task.update(sample_steps=4, eval_samples=8)
        c.memory.check = False
    if c.model.get("size") is None:
        del c.model["size"]
    return c
