"""BitNet b1.58 from scratch: ternary weights (f32 latent copy), 8-bit activations, the
Training Tips' two-stage learning rate and weight decay.

    # 350M (the largest named size whose training fits 12 GB: 7.65 GiB) on one card, bf16,
    # full remat; LLaMA tokenizer from a tokenizer.json folder:
    python -m launch.train --config configs/bitnet_b158.py \
        --config.data.path=<text file or folder> --config.data.vocab_path=<folder with tokenizer.json>
    python -m launch.memory --config configs/bitnet_b158.py --config.model.size=700m   # 15.3 GiB: no
    # a small b1.58 LM on a CPU, on the embedded corpus (bytes of Python's standard library):
    python -m launch.train --config configs/bitnet_b158.py:cpu
    python -m launch.train --config configs/bitnet_b158.py:cpu --config.model.quant=none  # full precision
    # tiny, ~20 steps (tests)
    python -m launch.train --config configs/bitnet_b158.py:smoke

Training Tips ("The Era of 1-bit LLMs: Training Tips, Code and FAQ", 700M row): lr 1.5e-3
cooled to 1e-3 half way, weight decay 0.1 then 0, Adam betas (0.9, 0.95), warmup 375,
2048-token sequences (used here for 350M too). The paper's 700M does not fit 12 GB: f32
latent weights + AdamW moments + f32 gradients are 16 bytes per parameter (10.9 GiB at
0.73B) before any activation. The optimizer updates the f32 latent weights; the forward sees only
their ternary quantisation (jaxmodels/layers/bitlinear.py). `:cpu` keeps the recipe's shape
(two stages, 0.1 -> 0 decay) with a higher rate for a tiny model and a short run.
"""
from jaxmodels.config import ConfigError
from jaxmodels.data.text import lm_data_config
from jaxmodels.tasks.lm import lm_task_config, model_section, smoke_run
from jaxmodels.train.defaults import base_config

VARIANTS = ("cpu", "smoke")


def two_stage(c, lr: float, stage2_lr: float, min_lr: float, weight_decay: float = 0.1) -> None:
    """The Training Tips' schedule: cosine from a high lr, cooled to stage2_lr half way; weight
    decay on in stage 1, 0 in stage 2."""
    c.optim.update(lr=lr, min_lr=min_lr, schedule="two_stage", weight_decay=weight_decay)
    c.optim.stage2_lr = stage2_lr
    c.optim.stage2_at = 0.5
    c.optim.stage2_weight_decay = 0.0


def get_config(arg=None):
    if arg not in (None,) + VARIANTS:
        raise ConfigError(f"unknown variant {arg!r} of bitnet_b158.py; valid: {', '.join(VARIANTS)}")
    c = base_config()
    c.model = model_section("bitnet", "350m", dtype="bfloat16", remat="nothing_saveable")
    c.task = lm_task_config(sample_tokens=64, sample_prompt=16)
    c.data = lm_data_config(
        source="file", path="data/text", tokenizer="hf", vocab_path="data/llama_tokenizer", seq_len=2048,
        max_bytes=0,
        path_help="Point --config.data.path at a text file or folder of .txt files and "
                  "--config.data.vocab_path at a folder with a LLaMA tokenizer.json (32000 tokens); "
                  "no data: configs/bitnet_b158.py:cpu.")
    c.optim.update(warmup_steps=375, decay_steps=-1, b1=0.9, b2=0.95, eps=1e-8, clip_norm=1.0)
    two_stage(c, lr=1.5e-3, stage2_lr=1e-3, min_lr=1e-4)
    c.train.update(steps=20000, batch_size=64, micro_batches=64, log_every=10, eval_every=500,
                   eval_batches=20, checkpoint_every=1000)
    if arg == "cpu":
        c.model = model_section("bitnet", vocab_size=256, dim=128, n_layers=4, n_heads=4, n_kv_heads=2,
                                hidden_dim=384, max_len=256, rope_theta=10000.0, tie_embeddings=False,
                                dtype="float32", remat="none")
        c.data.update(source="embedded", path="", tokenizer="byte", vocab_path="", seq_len=128,
                      max_bytes=2_000_000)
        c.optim.update(warmup_steps=50)
        two_stage(c, lr=4e-3, stage2_lr=2e-3, min_lr=2e-4)
        c.train.update(steps=600, batch_size=16, micro_batches=1, log_every=20, eval_every=100,
                       eval_batches=8, checkpoint_every=200)
        c.task.update(sample_tokens=64, sample_prompt=32)
        c.memory.check = False
    if arg == "smoke":
        c.model = model_section("bitnet", vocab_size=256, dim=32, n_layers=2, n_heads=2, n_kv_heads=1,
                                hidden_dim=64, max_len=64, tie_embeddings=False, dtype="float32", remat="none")
        smoke_run(c)
        # Both stages inside the 20 steps (the cooldown at step 10, where the resume test
        # restarts): the weight-decay schedule's count lives in the optimizer state.
        two_stage(c, lr=3e-3, stage2_lr=1.5e-3, min_lr=3e-4)
    return c
