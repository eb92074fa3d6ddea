"""QLoRA fine-tuning of Mamba-2.8B on one 12 GB card (state-spaces/mamba-2.8b).

    python -m launch.train --config configs/mamba_2p8b_qlora.py --config.init_from=<mamba-2.8b folder> \
        --config.data.path=<text> --config.data.vocab_path=<folder with GPT-NeoX's tokenizer.json>
    python -m launch.memory --config configs/mamba_2p8b_qlora.py     # the 12 GB check
    python -m launch.train --config configs/mamba_2p8b_qlora.py:smoke   # tiny, embedded corpus
    python -m launch.merge_adapters --workdir runs/mamba_2p8b_qlora --out merged/   # plain Mamba

Every Dense of the 64 blocks is stored in NF4 (jaxmodels/layers/quant.py); LoRA rank 16 on
in_proj and out_proj (the two large projections); everything else (embedding, conv, A_log,
norms) is a frozen bf16 base. Context 2048, micro-batch 1, layers rematerialised, the
chunked cross-entropy (no full [2048, 50280] f32 logits). `launch.memory` (compiled for
CPU): 3.82 GiB.
"""
from jaxmodels.config import ConfigError
from jaxmodels.data.text import lm_data_config
from jaxmodels.layers.adapters import adapters_config
from jaxmodels.tasks.lm import lm_task_config, model_section, smoke_run
from jaxmodels.train.defaults import base_config

VARIANTS = ("smoke",)


def get_config(arg=None):
    if arg not in (None,) + VARIANTS:
        raise ConfigError(f"unknown variant {arg!r} of mamba_2p8b_qlora.py; valid: {', '.join(VARIANTS)}")
    c = base_config()
    c.model = model_section("mamba", "mamba-2.8b", dtype="bfloat16", remat="nothing_saveable",
                            scan_mode="auto", scan_chunk=64)
    c.model.adapters = adapters_config(rank=16, alpha=32.0, targets="in_proj|out_proj", quant="nf4",
                                       base_dtype="bfloat16")
    c.task = lm_task_config(sample_tokens=64, sample_prompt=16)
    c.data = lm_data_config(
        source="file", path="data/finetune_text", tokenizer="hf", vocab_path="data/gpt-neox-20b",
        seq_len=2048, max_bytes=0,
        path_help="Point --config.data.path at a text file or folder of .txt files and "
                  "--config.data.vocab_path at a folder holding GPT-NeoX's tokenizer.json.")
    c.optim.update(lr=2e-4, min_lr=2e-5, warmup_steps=20, schedule="cosine", decay_steps=-1,
                   b1=0.9, b2=0.999, weight_decay=0.0, clip_norm=1.0, kind="adamw8bit")
    c.train.update(steps=1000, batch_size=8, micro_batches=8, log_every=10, eval_every=200,
                   eval_batches=8, checkpoint_every=200)
    c.kernels.cross_entropy = "xla"
    if arg == "smoke":
        c.model.update(d_model=32, n_layer=2, d_state=4, vocab_size=256, dtype="float32", remat="none",
                       scan_chunk=8)
        c.model.adapters.update(rank=4, base_dtype="float32")
        smoke_run(c)
    return c
