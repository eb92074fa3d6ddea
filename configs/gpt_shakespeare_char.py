"""nanoGPT's character-level Shakespeare GPT (config/train_shakespeare_char.py), plus variants.

    # the full run (6 layers, 6 heads, 384 wide, block 256; ~5000 steps; a GPU job) on the
    # tiny Shakespeare text shipped in the package (jaxmodels/data/corpora/):
    python -m launch.train --config configs/gpt_shakespeare_char.py
    # nanoGPT README's CPU "baby GPT" (4/4/128, block 64, batch 12, 200 steps):
    python -m launch.train --config configs/gpt_shakespeare_char.py:baby
    # no data file needed: the baby GPT on the Python standard library's sources (byte-level)
    python -m launch.train --config configs/gpt_shakespeare_char.py:embedded
    # tiny model, ~20 steps on the embedded corpus (tests)
    python -m launch.train --config configs/gpt_shakespeare_char.py:smoke

Measured on the 2-core dev CPU (shared, so wall times are loose): `:baby` reaches val loss
2.45 at step 200 (nanoGPT's baby run: 2.47); `:embedded` reaches val 1.94 nats/byte at
step 1000.

tinyshakespeare.txt (1,115,394 characters, 65 distinct) is char-rnn's `input.txt`
(GitHub karpathy/char-rnn, data/tinyshakespeare/input.txt).
"""
from jaxmodels.config import ConfigError
from jaxmodels.data.sources import packaged_corpus
from jaxmodels.data.text import lm_data_config
from jaxmodels.tasks.lm import lm_task_config, model_section
from jaxmodels.train.defaults import base_config

VARIANTS = ("baby", "embedded", "smoke")

WHERE_TO_GET_IT = (
    "Get tiny Shakespeare (char-rnn's data/tinyshakespeare/input.txt, 1,115,394 bytes, "
    "GitHub karpathy/char-rnn), e.g. `curl -o data/tinyshakespeare.txt https://raw.githubusercontent.com/"
    "karpathy/char-rnn/master/data/tinyshakespeare/input.txt`, or pass --config.data.path=<its path>. "
    "To train without it: configs/gpt_shakespeare_char.py:embedded.")


def get_config(arg=None):
    if arg not in (None,) + VARIANTS:
        raise ConfigError(f"unknown variant {arg!r} of gpt_shakespeare_char.py; valid: {', '.join(VARIANTS)}")
    c = base_config()
    # nanoGPT train_shakespeare_char.py: 6/6/384, block 256, dropout 0.2, bias False, exact GELU.
    # remat keeps the dense layers' outputs and recomputes attention (its [B, H, T, T] probs
    # would be 600 MB per step here): 0.85x the CPU step time of no remat (5.55 vs 6.55 s,
    # A/B), less memory on a GPU.
    c.model = model_section("gpt", "shakespeare-char", vocab_size=65, dtype="float32",
                            remat="dots_with_no_batch_dims_saveable")
    c.task = lm_task_config(sample_tokens=200, sample_prompt=16)
    c.data = lm_data_config(source="file", path=packaged_corpus("tinyshakespeare.txt"), path_help=WHERE_TO_GET_IT,
                            tokenizer="char", seq_len=256, max_bytes=0)
    c.optim.update(lr=1e-3, min_lr=1e-4, warmup_steps=100, schedule="cosine", decay_steps=5000,
                   b1=0.9, b2=0.99, weight_decay=0.1, clip_norm=1.0)
    # nanoGPT evaluates 200 random batches; our val set is one fixed pass of random windows
    # over the val split (111,540 tokens -> 435 windows), so at most 6 batches of 64 exist.
    c.train.update(steps=5000, batch_size=64, micro_batches=1, log_every=10, eval_every=250,
                   eval_batches=200, checkpoint_every=250)
    c.train.cpu_variant = ("python -m launch.train --config configs/gpt_shakespeare_char.py:baby "
                           "--config.data.path=<the same file> (nanoGPT's CPU settings, a few minutes)")

    if arg in ("baby", "embedded"):
        # nanoGPT README, "I only have a macbook": 4/4/128, block 64, batch 12, no dropout.
        # remat is *faster* on XLA:CPU here too (measured A/B): recomputing the cheap
        # elementwise ops beats copying saved activations around.
        c.model = model_section("gpt", "baby-shakespeare", vocab_size=65, dropout=0.0,
                                remat="dots_with_no_batch_dims_saveable")
        c.data.seq_len = 64
        c.optim.update(lr=1e-3, min_lr=1e-4, warmup_steps=100, decay_steps=-1)
        c.train.update(steps=200, batch_size=12, eval_every=100, eval_batches=20, checkpoint_every=100,
                       cpu_variant="")
        c.task.sample_tokens = 48
    if arg == "embedded":
        # Python's own standard library as the corpus: on every machine, nothing to download.
        # Bytes, not characters: a fixed 256-entry vocab whatever the Python version's sources.
        c.data.update(source="embedded", path="", tokenizer="byte", max_bytes=2_000_000)
        c.model.vocab_size = 256
        c.train.update(steps=1000, eval_every=250, checkpoint_every=250)
    if arg == "smoke":
        c.model = model_section("gpt", "baby-shakespeare", n_layer=2, n_head=2, n_embd=32,
                                block_size=32, dropout=0.0, vocab_size=256)
        c.data.update(source="embedded", path="", tokenizer="byte", seq_len=32, max_bytes=300_000)
        c.optim.update(lr=3e-3, min_lr=3e-4, warmup_steps=5, decay_steps=-1)
        c.train.update(steps=20, batch_size=8, log_every=5, eval_every=10, eval_batches=2,
                       checkpoint_every=10, progress=False, cpu_variant="")
        c.task.update(sample_tokens=16, sample_prompt=8)
        c.memory.check = False
    return c
