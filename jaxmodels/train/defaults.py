"""The config schema every experiment starts from: `base_config()` then fill in.

Configs (configs/*.py) call base_config() and set what differs. Fields may be added here;
renaming one breaks every config, so don't. Model-specific fields (sizes, dtype, remat,
scan) live in the `model` section, whose keys are the family dataclass's fields.
"""
from __future__ import annotations

import ml_collections


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    # model.name picks the family (jaxmodels.models.FAMILIES); other keys are the family
    # Config fields, optionally starting from a named size: model.size = "gpt2".
    c.model = ml_collections.ConfigDict({"name": ""})
    # task.name: "lm" | "diffusion"; other keys are task options.
    c.task = ml_collections.ConfigDict({"name": "lm"})
    # data: source ("embedded" | "file" | "tfds" | ...), path, tokenizer, seq_len, ...
    c.data = ml_collections.ConfigDict({"source": "embedded", "path": ""})
    c.optim = ml_collections.ConfigDict(dict(
        lr=1e-3,                # peak learning rate
        min_lr=1e-4,            # cosine floor
        warmup_steps=100,
        schedule="cosine",      # "cosine" | "constant"
        decay_steps=-1,         # -1: decay over train.steps
        b1=0.9,
        b2=0.95,
        eps=1e-8,
        weight_decay=0.1,       # never applied to norms, biases or any 1-D param
        clip_norm=1.0,          # global-norm clipping; 0 disables
        kind="adamw",           # optimizer state: "adamw" (f32) | "adamw8bit" | "adafactor" (train/optim.py)
        param_dtype="float32",  # "bfloat16": trained params stored in bf16, stochastic rounding (adamw8bit only)
    ))
    c.train = ml_collections.ConfigDict(dict(
        steps=1000,
        batch_size=64,          # examples per optimizer step (all micro-batches together)
        micro_batches=1,        # gradient accumulation: batch_size / micro_batches each
        seed=0,
        log_every=10,
        eval_every=250,
        eval_batches=10,
        eval_minutes=0.0,       # also evaluate when this much wall time passed since the last eval (0: off)
        checkpoint_every=250,
        checkpoint_minutes=10.0,  # also save when this much wall time passed since the last save (0: off)
        max_to_keep=3,
        async_checkpoint=False,  # False: a save blocks the step loop until it is on disk, so a kill
                                 # redoes at most 1 interval (nanoGPT / llm.c save this way too).
                                 # True: write in the background while training goes on (faster
                                 # when saves are large), a kill then redoes < 2 intervals
        ema_decay=0.0,          # 0 disables the EMA of params
        ema_warmup=False,       # decay min(ema_decay, (1+n)/(10+n)) as in DiT/timm warm-up
        eval_errors="warn",     # an eval that raises: "warn" (report, keep training) | "raise"
        skip_loss_z=0.0,        # >0: skip the update of a step whose loss z-score exceeds this, or
                                # whose new state is NaN/inf (llm.c's outlier skip); 0: stop on NaN/inf
        skip_window=128,        # losses the z-score is taken over (no skipping until it is full)
        rollback_after=0,       # with skip_loss_z: after this many skipped steps in a row, reload
                                # params + optimizer from the newest checkpoint (0: never)
        progress=True,          # tqdm progress bar
        tensorboard=False,
        workdir="",             # default: runs/<config name>
        cpu_variant="",         # GPU-sized configs: the command that finishes in minutes on a CPU,
                                # printed as advice before step 0 when running on a CPU
    ))
    c.memory = ml_collections.ConfigDict(dict(
        budget_gb=12.0,         # XLA allocator cap on GPU and the fit check before step 0
        check=True,
        auto_fit=False,         # before step 0, pick the fastest micro_batches / remat / optimizer-state
                                # format / scan chunk that fits the budget (train/autofit.py)
    ))
    # Implementation per hot op (jaxmodels/kernels/dispatch.py): "auto" | "pallas" | "xla";
    # cross_entropy also "dense" (full logits); attention, norm and matmul also "cpu" (the C++
    # CPU kernels). auto: the XLA form unless Pallas is faster here (on a CPU: the C++ kernels).
    c.kernels = ml_collections.ConfigDict(dict(
        attention="auto", cross_entropy="auto", norm="auto", selective_scan="auto", rwkv7="auto",
        nf4_matmul="auto", matmul="auto"))
    # Device mesh (jaxmodels/train/mesh.py): data x fsdp x tensor devices; one size may be -1
    # (the remaining devices). The batch splits over data*fsdp; fsdp also splits params and
    # optimizer state (leaves of at least fsdp_min_size elements); tensor splits heads / MLP width.
    # On a CPU, launch.train makes each core a device (cpu_devices: 0 = one per core, 1 = off,
    # N = at most N; jaxmodels/train/cpu_devices.py), so data=-1 runs data parallel over the cores.
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1, fsdp_min_size=1024, cpu_devices=0))
    c.init_from = ""            # pretrained checkpoint: a launch.convert output or HF folder
    return c
