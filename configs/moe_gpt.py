"""A light Mixture-of-Experts GPT: 8 GELU experts per layer, top-2 routing (Mixtral-style
renormalised weights), dropless dispatch, Switch load-balancing + ST-MoE z-loss.

    # 12 GB GPU size (12 layers, 768 wide, 8 experts of 1536, block 512; 255M params, 85M active
    # per token; launch.memory: 9.06 of 12 GiB with 2 micro-batches of 16):
    python -m launch.train --config configs/moe_gpt.py --config.data.path=tinyshakespeare.txt
    # CPU recipe on the embedded corpus (Python's standard library, bytes; no data file):
    python -m launch.train --config configs/moe_gpt.py:cpu
    # its dense twin: the same active parameters (one 4C MLP instead of top-2 of 8 experts 2C wide)
    python -m launch.train --config configs/moe_gpt.py:dense_cpu
    # tiny, ~20 steps (tests; kill -9 resume)
    python -m launch.train --config configs/moe_gpt.py:smoke

Useful overrides: --config.model.moe_dispatch=capacity --config.model.moe_capacity_factor=1.25
(GShard/Switch token dropping), --config.model.moe_every=2 (MoE every other layer, as in
Switch / gpt-neox), --config.model.moe_router=switch --config.model.moe_top_k=1 (Switch).
Per-layer expert loads, dropped fraction and router entropy go to metrics.jsonl
(moe_load/l{layer}_e{expert}, moe_dropped, moe_entropy); the train loss includes the router
losses, val_loss is the cross-entropy alone.
"""
from jaxmodels.config import ConfigError
from jaxmodels.data.text import lm_data_config
from jaxmodels.tasks.lm import lm_task_config, model_section, smoke_run
from jaxmodels.train.defaults import base_config

VARIANTS = ("cpu", "dense_cpu", "smoke")
MOE = dict(moe_experts=8, moe_top_k=2, moe_every=1, moe_router="mixtral", moe_dispatch="dropless",
           moe_capacity_factor=1.25, moe_aux_weight=0.01, moe_z_weight=0.001)


def get_config(arg=None):
    if arg not in (None,) + VARIANTS:
        raise ConfigError(f"unknown variant {arg!r} of moe_gpt.py; valid: {', '.join(VARIANTS)}")
    c = base_config()
    c.model = model_section("gpt", "", vocab_size=65, block_size=512, n_layer=12, n_head=12, n_embd=768,
                            dropout=0.0, bias=False, gelu="exact", moe_hidden=1536,
                            remat="dots_with_no_batch_dims_saveable", **MOE)
    c.task = lm_task_config(sample_tokens=200, sample_prompt=16)
    c.data = lm_data_config(source="file", path="data/tinyshakespeare.txt", tokenizer="char", seq_len=512,
                            max_bytes=0, path_help="tiny Shakespeare is char-rnn's data/tinyshakespeare/"
                            "input.txt; or train on the embedded corpus: configs/moe_gpt.py:cpu")
    c.optim.update(lr=1e-3, min_lr=1e-4, warmup_steps=200, b1=0.9, b2=0.95, weight_decay=0.1)
    c.train.update(steps=5000, batch_size=32, micro_batches=2, log_every=20, eval_every=500,
                   eval_batches=20, checkpoint_every=500)

    if arg in ("cpu", "dense_cpu"):
        # The baby GPT of gpt_shakespeare_char.py:embedded (4 layers, 128 wide, block 64) with
        # each MLP replaced by 8 experts 256 wide, top-2: the active FFN width per token
        # (2 x 256) equals the dense twin's 4C = 512 MLP.
        c.model = model_section("gpt", "", vocab_size=256, block_size=64, n_layer=4, n_head=4,
                                n_embd=128, dropout=0.0, bias=False, gelu="exact", moe_hidden=256,
                                remat="none", **MOE)
        if arg == "dense_cpu":
            c.model.moe_experts = 0
        c.data.update(source="embedded", path="", tokenizer="byte", seq_len=64, max_bytes=2_000_000)
        c.optim.update(lr=2e-3, min_lr=2e-4, warmup_steps=100)
        c.train.update(steps=1000, batch_size=32, micro_batches=1, log_every=25, eval_every=250,
                       eval_batches=20, checkpoint_every=500)
        c.task.sample_tokens = 48
    if arg == "smoke":
        c.model = model_section("gpt", "", vocab_size=256, block_size=32, n_layer=2, n_head=2, n_embd=32,
                                dropout=0.0, bias=False, gelu="exact", moe_hidden=32, remat="none",
                                **dict(MOE, moe_experts=4))
        smoke_run(c)
    return c
