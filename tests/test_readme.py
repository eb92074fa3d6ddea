"""Every command README.md shows (the two at the top and every one in "A tour") runs.

Each command is mapped, in TINY below, to a tiny form: the same entry point and config with
a `:smoke` variant or small overrides, and a committed fixture where the README names a
download (path/to/gpt2, path/to/Llama-2-7b-hf). The tiny forms run as subprocesses in a
scratch folder that looks like a fresh clone (configs/ linked in, `runs/` created by the
commands themselves), and must exit 0.

`test_every_readme_command_has_a_tiny_form` fails, naming the command, as soon as README
shows a command that TINY does not map (or TINY maps one README no longer shows): add an
entry when you add a row. Most tiny forms are `@pytest.mark.slow` (run them with
`python -m pytest tests/test_readme.py -m slow -n 0`); a fast subset runs by default.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
import shlex
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "tests", "fixtures")


# ------------------------------------------------------------------ what README shows

def top_commands(text: str) -> list[str]:
    """The lines of README's first ```bash block."""
    block = re.search(r"```bash\n(.*?)```", text, re.S)
    assert block, "README.md has no ```bash block at the top"
    return [line.strip() for line in block.group(1).splitlines() if line.strip()]


def tour_commands(text: str) -> list[str]:
    """Every `code span` in the command column of the table under "## A tour"."""
    section = re.search(r"^## A tour\n(.*?)(?=^## )", text, re.S | re.M)
    assert section, "README.md has no '## A tour' section"
    spans = []
    for line in section.group(1).splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 2 or set(cells[1]) <= set("-: ") or cells[1] == "command":
            continue
        spans += re.findall(r"`([^`]+)`", cells[1])
    assert spans, "found no commands in README's tour table"
    return spans


def readme_commands() -> list[str]:
    with open(os.path.join(ROOT, "README.md")) as f:
        text = f.read()
    return list(dict.fromkeys(top_commands(text) + tour_commands(text)))


# ------------------------------------------------------------------ their tiny forms

def pip_would_install(extras: tuple[str, ...] = ()) -> str:
    """The offline stand-in for `pip install .[extras]` (the test machine has no network and an
    old setuptools): the packages pyproject.toml installs exist, and every dependency it
    declares is installed at a version it accepts."""
    import importlib.metadata
    import tomllib

    from packaging.requirements import Requirement

    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)
    for pattern in project["tool"]["setuptools"]["packages"]["find"]["include"]:
        package = pattern.rstrip("*")
        assert os.path.isfile(os.path.join(ROOT, package, "__init__.py")), f"{package}/__init__.py missing"
    wanted = list(project["project"]["dependencies"])
    for extra in extras:
        wanted += project["project"]["optional-dependencies"][extra]
    for line in wanted:
        req = Requirement(line)
        try:
            version = importlib.metadata.version(req.name)
        except importlib.metadata.PackageNotFoundError:
            raise AssertionError(f"pyproject.toml needs {line!r}, which is not installed") from None
        assert req.specifier.contains(version, prereleases=True), f"{req.name} {version} does not satisfy {line!r}"
    return f"pip install .{list(extras) or ''}: {len(wanted)} requirements satisfied\n"


@dataclasses.dataclass(frozen=True)
class Tiny:
    """Steps run in order in the scratch folder: a command ("python" is this interpreter;
    {root} and {fixtures} are filled in) or a Python callable returning its output.
    `expect`: text the output of all steps must contain."""
    steps: tuple
    slow: bool = True
    expect: tuple[str, ...] = ()


# Small overrides shared by several forms.
QUICK = "--config.train.steps=2 --config.train.log_every=1 --config.train.checkpoint_every=2 --config.memory.check=false"
TINY_DIT = ("--config.train.batch_size=4 --config.task.eval_samples=8 --config.task.sample_steps=2 "
            "--config.task.eval_judge=false --config.train.eval_batches=1")
# dit_small.py names a size (DiT-S/4); its 8x8-patch sibling reads 16 tokens instead of 64.
SMALLER_DIT_S = "--config.model.size=dit-s/8"
SMALL_CPU_DIT = "--config.model.hidden_size=32 --config.model.depth=1 --config.model.num_heads=2"
TINY_GPT = ("--config.model.n_layer=1 --config.model.n_head=2 --config.model.n_embd=32 "
            "--config.model.block_size=32 --config.data.seq_len=32 --config.train.batch_size=4 "
            "--config.train.micro_batches=1 --config.train.eval_batches=1 --config.train.eval_every=2")
# launch.convert of the committed tiny GPT-2 fixture (2 layers, 32 wide, 64 positions, vocab 96).
CONVERT_GPT2 = "python -m launch.convert --hf {fixtures}/gpt2 --out gpt2-jax"
FROM_GPT2 = ("python -m launch.train --config configs/gpt2_124m.py:smoke --config.init_from=gpt2-jax "
             "--config.model.n_layer=2 --config.model.n_head=2 --config.model.n_embd=32 "
             "--config.model.block_size=64 --config.model.vocab_size=96 --config.model.gelu=tanh "
             "--config.model.bias=true --config.data.source=tokens --config.data.path=tokens96.bin "
             "--config.data.tokenizer=gpt2 --config.data.vocab_path= " + QUICK)
# The README's LLaMA-2-7B QLoRA command on the committed tiny Llama (2 layers, 32 wide,
# vocab 128, its tokenizer.json), as init_from and vocab_path.
LLAMA = "{fixtures}/llama/llama"
TINY_LLAMA = ("--config.model.dim=32 --config.model.n_layers=2 --config.model.n_heads=4 "
              "--config.model.n_kv_heads=2 --config.model.hidden_dim=64 --config.model.max_len=64 "
              "--config.model.vocab_size=128 --config.model.lora_rank=4 --config.data.seq_len=48 "
              "--config.train.batch_size=2 --config.train.micro_batches=1 --config.train.eval_batches=1 "
              "--config.train.eval_every=2 " + QUICK)
QLORA = ("python -m launch.train --config configs/llama2_7b_qlora.py "
         f"--config.init_from={LLAMA} --config.data.vocab_path={LLAMA} " + TINY_LLAMA)
SMOKE_LM = "--config.train.steps=4 --config.train.eval_every=2 --config.train.checkpoint_every=2"
PREPARE = ("python -m launch.prepare jaxmodels/data/corpora/tinyshakespeare.txt --out data/shakespeare_bytes "
           "--tokenizer byte --shard_tokens 500000 --val_tokens 100000")
FROM_SHARDS = ("python -m launch.train --config configs/gpt_shakespeare_char.py:smoke --config.data.source=tokens "
               "--config.data.path=data/shakespeare_bytes")
EVALUATE_LM = ("python -m launch.evaluate --workdir runs/smoke --tokens data/shakespeare_bytes "
               "--hellaswag tests/fixtures/lm_eval/hellaswag3.jsonl")
MOE_DENSE = "python -m launch.train --config configs/moe_gpt.py:dense_cpu " + QUICK
BITNET_RUN = f"python -m launch.train --config configs/bitnet_b158.py:smoke --workdir runs/bitnet_b158_cpu {SMOKE_LM}"

# The image-folder row: generated captioned shapes at 32 px, the committed tiny random VAE
# (2x down: 16x16x4 latents, what dit_b2.py:cpu reads) and the seeded stand-in FID weights.
MY_IMAGES = "python -c \"from jaxmodels.data import glyphs; glyphs.write_folder('data/my_images', 48, 32)\""
ENCODE = ("python -m launch.encode --images data/my_images --vae {fixtures}/vae --out data/my_latents "
          "--image-size 32 --batch-size 8 --shard-size 16 --no-progress")
DIT_B2_CPU = ("python -m launch.train --config configs/dit_b2.py:cpu --config.data.path=data/my_latents "
              f"--config.data.vae={{fixtures}}/vae {QUICK} {SMALL_CPU_DIT} --config.train.batch_size=4 "
              "--config.task.eval_samples=8 --config.task.sample_steps=2 --config.train.eval_batches=0")
# configs/vae_small.py trained 2 steps on the same folder (its eval exports runs/vae_small/vae).
VAE_SMALL = ("python -m launch.train --config configs/vae_small.py --config.data.path=data/my_images "
             f"{QUICK} --config.train.eval_every=2 --config.train.batch_size=4 --config.data.val_size=4 "
             "--config.task.eval_images=4 --config.train.eval_batches=1")
FID_WEIGHTS = ("python -c \"import sys; sys.path.insert(0, '{fixtures}'); from inception_weights import state_dict; "
               "from safetensors.numpy import save_file; save_file(state_dict(), 'fid_inception.safetensors')\"")

TINY: dict[str, Tiny] = {
    # --- the two commands at the top
    "pip install . && python -m launch.train --config configs/dit_small.py": Tiny((
        pip_would_install,
        f"python -m launch.train --config configs/dit_small.py {QUICK} {TINY_DIT} {SMALLER_DIT_S}",
    ), expect=("advice:", "plan:")),
    'pip install ".[test]" && python -m pytest tests -n 2': Tiny((
        functools.partial(pip_would_install, ("test",)),
        "python -m pytest {root}/tests -n 2 --collect-only -q",
    )),
    # --- the tour
    "python -m launch.train --config configs/dit_small.py": Tiny((
        f"python -m launch.train --config configs/dit_small.py {QUICK} {TINY_DIT} {SMALLER_DIT_S}",
        "python -c \"import os; assert os.listdir('runs/dit_small/samples'), 'no grid'\"",
    ), slow=False, expect=("advice: this config is sized for a GPU", "plan: 2 steps x 4 examples", "measured:",
                           "eval at step 2")),
    "python -m launch.train --config configs/dit_small.py:cpu": Tiny((
        f"python -m launch.train --config configs/dit_small.py:cpu {QUICK} {TINY_DIT} {SMALL_CPU_DIT}",
    )),
    "python -m launch.sample --workdir runs/dit_small_cpu --num 64 --cfg 4.0 --sampler ddim --steps 50": Tiny((
        "python -m launch.train --config configs/dit_small.py:smoke --workdir runs/dit_small_cpu",
        "python -m launch.sample --workdir runs/dit_small_cpu --num 8 --cfg 4.0 --sampler ddim --steps 2",
    )),
    "python -m launch.evaluate --workdir runs/dit_small_cpu": Tiny((
        "python -m launch.train --config configs/dit_small.py:smoke --workdir runs/dit_small_cpu",
        "python -m launch.evaluate --workdir runs/dit_small_cpu --num 16 --steps 2",
    ), expect=("judge_accuracy",)),
    "python -m launch.encode --images data/my_images --vae path/to/sd-vae-ft-mse --out data/my_latents "
    "--image-size 128": Tiny((MY_IMAGES, ENCODE), slow=False, expect=("wrote 48 items", "latent_scale=0.18215")),
    "python -m launch.train --config configs/dit_b2.py:cpu --config.data.path=data/my_latents "
    "--config.data.vae=path/to/sd-vae-ft-mse": Tiny((MY_IMAGES, ENCODE, DIT_B2_CPU)),
    "python -m launch.sample --workdir runs/dit_b2_cpu --num 16 --steps 25": Tiny((
        MY_IMAGES, ENCODE, DIT_B2_CPU,
        "python -m launch.sample --workdir runs/dit_b2_cpu --num 8 --steps 2",
        "python -c \"import numpy as np, glob; assert np.load(glob.glob('runs/dit_b2_cpu/samples/*.npz')[0])"
        "['images'].shape == (8, 32, 32, 3)\"",
    )),
    "python -m launch.evaluate --fid --workdir runs/dit_b2_cpu --ref data/my_images "
    "--inception fid_inception.safetensors": Tiny((
        MY_IMAGES, ENCODE, DIT_B2_CPU, FID_WEIGHTS,
        "python -m launch.evaluate --fid --workdir runs/dit_b2_cpu --ref data/my_images --num 8 --steps 2 "
        "--inception fid_inception.safetensors --batch-size 8",
    ), expect=("fid",)),
    "python -m launch.train --config configs/vae_small.py --config.data.path=data/my_images": Tiny((
        MY_IMAGES, VAE_SMALL,
        "python -c \"import json; assert json.load(open('runs/vae_small/vae/config.json'))['scaling_factor'] > 0\"",
    ), expect=("scaling_factor",)),
    "python -m launch.encode --images data/my_images --vae runs/vae_small --out data/my_latents "
    "--image-size 32": Tiny((
        MY_IMAGES, VAE_SMALL,
        "python -m launch.encode --images data/my_images --vae runs/vae_small --out data/my_latents "
        "--image-size 32 --batch-size 8 --shard-size 16 --no-progress",
    ), expect=("wrote 48 items", "--config.data.vae=runs/vae_small")),
    "python -m launch.train --config configs/sd_light.py:smoke": Tiny((
        f"python -m launch.train --config configs/sd_light.py:smoke {QUICK}",
    )),
    "python -m launch.memory --config configs/pixart_alpha_512.py": Tiny((
        "python -m launch.memory --config configs/pixart_alpha_512.py:smoke",
    ), expect=("budget",)),
    "python -m launch.train --config configs/pixart_small.py:cpu": Tiny((
        f"python -m launch.train --config configs/pixart_small.py:cpu {QUICK} {TINY_DIT} {SMALL_CPU_DIT}",
    )),
    # no data flag: tiny Shakespeare ships in the package
    "python -m launch.train --config configs/gpt_shakespeare_char.py": Tiny((
        f"python -m launch.train --config configs/gpt_shakespeare_char.py {QUICK} {TINY_GPT}",
    )),
    PREPARE: Tiny((PREPARE.replace("jaxmodels/", "{root}/jaxmodels/"),), expect=("shakespeare_bytes",)),
    FROM_SHARDS: Tiny((PREPARE.replace("jaxmodels/", "{root}/jaxmodels/"), f"{FROM_SHARDS} {SMOKE_LM}")),
    "python -m launch.chat --hf path/to/chat-model": Tiny((
        "sh -c \"printf 'w10 w11\\nw12\\n' | {python} -m launch.chat --hf {fixtures}/llama/llama --greedy --max_new_tokens 8\"",
    )),
    "python -m launch.train --config configs/gpt_shakespeare_char.py:smoke --workdir runs/smoke": Tiny((
        f"python -m launch.train --config configs/gpt_shakespeare_char.py:smoke --workdir runs/smoke {SMOKE_LM}",
    )),
    EVALUATE_LM: Tiny((
        PREPARE.replace("jaxmodels/", "{root}/jaxmodels/"),
        f"python -m launch.train --config configs/gpt_shakespeare_char.py:smoke --workdir runs/smoke {SMOKE_LM}",
        EVALUATE_LM.replace("tests/fixtures/", "{fixtures}/"),
        "python -m launch.evaluate --hf {fixtures}/llama/llama --hellaswag {fixtures}/lm_eval/hellaswag3.jsonl",
    ), expect=("hellaswag",)),
    ":baby": Tiny((
        "python -m launch.train --config configs/gpt_shakespeare_char.py:baby --config.data.path=tinyshakespeare.txt "
        f"{QUICK} --config.train.eval_batches=1",
    )),
    "python -m launch.train --config configs/gpt_shakespeare_char.py:embedded": Tiny((
        "python -m launch.train --config configs/gpt_shakespeare_char.py:embedded --config.data.max_bytes=100000 "
        f"{QUICK} --config.train.eval_batches=1",
    )),
    "python -m launch.train --config configs/mingpt_sort.py": Tiny((
        f"python -m launch.train --config configs/mingpt_sort.py {QUICK} --config.train.eval_every=2 "
        "--config.train.eval_batches=1",
    ), expect=("eval at step 2",)),
    "python -m launch.train --config configs/gpt2_124m.py --config.data.source=tokens --config.data.path=...": Tiny((
        "python -m launch.train --config configs/gpt2_124m.py --config.data.source=tokens "
        f"--config.data.path=tokens.bin --config.model.vocab_size=256 --config.model.dtype=float32 {QUICK} {TINY_GPT}",
    )),
    # the README's exact command, 200 new tokens past the smoke model's 32-token context
    'python -m launch.generate --workdir runs/gpt_shakespeare_char_embedded --prompt "ROMEO:"': Tiny((
        f"python -m launch.train --config configs/gpt_shakespeare_char.py:smoke {SMOKE_LM} "
        "--workdir runs/gpt_shakespeare_char_embedded",
        'python -m launch.generate --workdir runs/gpt_shakespeare_char_embedded --prompt "ROMEO:"',
    ), slow=False, expect=("ROMEO:",)),
    "python -m launch.convert --hf path/to/gpt2 --out gpt2-jax": Tiny((CONVERT_GPT2,)),
    "--config.init_from=gpt2-jax": Tiny((CONVERT_GPT2, FROM_GPT2)),
    "python -m launch.train --config configs/llama2_7b_qlora.py --config.init_from=path/to/Llama-2-7b-hf "
    "--config.data.vocab_path=path/to/Llama-2-7b-hf": Tiny((QLORA,)),
    "--config.data.path=alpaca_data.json": Tiny((QLORA + " --config.data.path=alpaca_data.json",)),
    "python -m launch.merge_lora --workdir runs/llama2_7b_qlora --out merged": Tiny((
        QLORA, "python -m launch.merge_lora --workdir runs/llama2_7b_qlora --out merged",
        "python -c \"import os; assert os.path.isfile('merged/config.json')\"",
    )),
    "python -m launch.train --config configs/rwkv7_2p9b_lora.py:qlora_smoke": Tiny((
        f"python -m launch.train --config configs/rwkv7_2p9b_lora.py:qlora_smoke {SMOKE_LM}",
    ), expect=("step 4/4",)),
    "python -m launch.merge_adapters --workdir runs/rwkv7_2p9b_lora_qlora_smoke --out merged-rwkv7": Tiny((
        f"python -m launch.train --config configs/rwkv7_2p9b_lora.py:qlora_smoke {SMOKE_LM}",
        "python -m launch.merge_adapters --workdir runs/rwkv7_2p9b_lora_qlora_smoke --out merged-rwkv7",
        # the merged weights are a plain RWKV-7 of the smoke size
        f"python -m launch.train --config configs/rwkv7_l12_d768.py:smoke --config.init_from=merged-rwkv7 {SMOKE_LM}",
    ), expect=("adapters merged",)),
    "configs/mamba_2p8b_qlora.py": Tiny((f"python -m launch.train --config configs/mamba_2p8b_qlora.py:smoke {SMOKE_LM}",)),
    "configs/rwkv7_2p9b_lora.py": Tiny((
        f"python -m launch.train --config configs/rwkv7_2p9b_lora.py:smoke {SMOKE_LM}",
        f"python -m launch.train --config configs/rwkv7_2p9b_lora.py:state_smoke {SMOKE_LM}",
    )),
    "configs/rwkv7_7b_qlora.py": Tiny((f"python -m launch.train --config configs/rwkv7_7b_qlora.py:smoke {SMOKE_LM}",)),
    "configs/retnet_3b_lora.py": Tiny((f"python -m launch.train --config configs/retnet_3b_lora.py:smoke {SMOKE_LM}",)),
    "configs/dit_xl2_lora.py": Tiny((MY_IMAGES, ENCODE, "python -m launch.train --config configs/dit_xl2_lora.py:smoke "
                                     "--config.data.path=data/my_latents --config.train.steps=2 "
                                     "--config.train.checkpoint_every=2")),
    "python -m launch.train --config configs/gpt2_large_8bit.py:smoke": Tiny((
        f"python -m launch.train --config configs/gpt2_large_8bit.py:smoke {SMOKE_LM}",
    )),
    "configs/mamba_130m.py": Tiny((f"python -m launch.train --config configs/mamba_130m.py:smoke {SMOKE_LM}",)),
    "configs/rwkv4_169m.py": Tiny((f"python -m launch.train --config configs/rwkv4_169m.py:smoke {SMOKE_LM}",)),
    "configs/rwkv7_l12_d768.py": Tiny((f"python -m launch.train --config configs/rwkv7_l12_d768.py:smoke {SMOKE_LM}",)),
    "configs/retnet_base.py": Tiny((f"python -m launch.train --config configs/retnet_base.py:smoke {SMOKE_LM}",)),
    # "(each with `:smoke`)": the four entries above run exactly that
    ":smoke": Tiny((f"python -m launch.train --config configs/mamba_130m.py:smoke {SMOKE_LM}",)),
    # --- BitNet b1.58 (the released-checkpoint rows run on the committed tiny transformers fixtures)
    "python -m launch.train --config configs/bitnet_b158.py:cpu": Tiny((BITNET_RUN,)),
    "--config.model.quant=none": Tiny((BITNET_RUN + " --config.model.quant=none",)),
    'python -m launch.generate --hf path/to/bitnet-b1.58-2B-4T --prompt "The capital of France is"': Tiny((
        "python -m launch.generate --hf {fixtures}/bitnet/packed_tied --prompt 'the' --max_new_tokens 4 --greedy",
    )),
    "launch.convert --hf": Tiny(("python -m launch.convert --hf {fixtures}/bitnet/master --out bitnet-jax",)),
    "-bf16": Tiny(("python -m launch.convert --hf {fixtures}/bitnet/master --out bitnet-jax",)),
    "python -m launch.export_bitnet --workdir runs/bitnet_b158_cpu --out bitnet-packed": Tiny((
        BITNET_RUN, "python -m launch.export_bitnet --workdir runs/bitnet_b158_cpu --out bitnet-packed",
    )),
    "--layout master": Tiny((
        BITNET_RUN, "python -m launch.export_bitnet --workdir runs/bitnet_b158_cpu --out bitnet-master --layout master",
    )),
    'python -m launch.generate --workdir runs/bitnet_b158_cpu --packed --prompt "def "': Tiny((
        BITNET_RUN, "python -m launch.generate --workdir runs/bitnet_b158_cpu --packed --prompt 'def ' --max_new_tokens 8",
    )),
    # --- Mixture-of-Experts
    "python -m launch.train --config configs/moe_gpt.py:cpu": Tiny((
        f"python -m launch.train --config configs/moe_gpt.py:smoke {SMOKE_LM}",
    )),
    "python -m launch.train --config configs/moe_gpt.py:dense_cpu": Tiny((MOE_DENSE,)),
    "python -m launch.upcycle --from runs/moe_gpt_dense_cpu --experts 8 --top-k 2 --out upcycled": Tiny((
        MOE_DENSE, "python -m launch.upcycle --from runs/moe_gpt_dense_cpu --experts 8 --top-k 2 --out upcycled",
    )),
    "python -m launch.train --config configs/moe_gpt.py:cpu --config.model.moe_hidden=0 --config.init_from=upcycled --workdir runs/upcycled": Tiny((
        MOE_DENSE, "python -m launch.upcycle --from runs/moe_gpt_dense_cpu --experts 8 --top-k 2 --out upcycled",
        "python -m launch.train --config configs/moe_gpt.py:cpu --config.model.moe_hidden=0 "
        "--config.init_from=upcycled --workdir runs/upcycled " + QUICK,
    )),
    # docs/merge_moe.yaml as shipped, its three model folders standing in for the tiny Llama fixture
    "python -m launch.merge_moe --config docs/merge_moe.yaml --out frankenmoe": Tiny((
        "python -c \"import os; os.symlink('{root}/docs', 'docs'); os.makedirs('models'); "
        "[os.symlink('{fixtures}/llama/llama', 'models/' + n) for n in ('base-chat', 'code-tuned', 'story-tuned')]\"",
        "python -m launch.merge_moe --config docs/merge_moe.yaml --out frankenmoe",
    )),
    # --- long context, released RWKV-7, Mamba export, auto-fit
    "python -m launch.train --config configs/rwkv7_l12_d768.py:smoke --config.task.carry_state=True": Tiny((
        f"python -m launch.train --config configs/rwkv7_l12_d768.py:smoke --config.task.carry_state=True {SMOKE_LM}",
    )),
    "python -m launch.convert --hf path/to/rwkv7-hf --out rwkv7-jax": Tiny((
        "python -m launch.convert --hf {fixtures}/rwkv7 --out rwkv7-jax",
    ), slow=False, expect=("'name': 'rwkv7'",)),
    "python -m launch.export_hf --workdir runs/mamba_130m_smoke --out mamba-hf": Tiny((
        f"python -m launch.train --config configs/mamba_130m.py:smoke {SMOKE_LM}",
        "python -m launch.export_hf --workdir runs/mamba_130m_smoke --out mamba-hf",
        "python -c \"import os; assert os.path.isfile('mamba-hf/model.safetensors')\"",
    )),
    "python -m launch.memory --config configs/mamba_130m.py --fit": Tiny((
        "python -m launch.memory --config configs/mamba_130m.py:smoke --fit",
    ), expect=("plan (relative step time",)),
    "python -m launch.memory --config configs/X.py": Tiny((
        "python -m launch.memory --config configs/gpt_shakespeare_char.py:smoke",
    ), expect=("budget",)),
    "python -m launch.bench --config configs/gpt2_124m.py": Tiny((
        "python -m launch.bench --config configs/gpt2_124m.py:smoke --steps 2 --warmup 1",
    )),
}


# ------------------------------------------------------------------ the scratch "clone"

SHAKESPEARE = """First Citizen:
Before we proceed any further, hear me speak.

All:
Speak, speak.

First Citizen:
You are all resolved rather to die than to famish?

All:
Resolved. resolved.

ROMEO:
But, soft! what light through yonder window breaks?
It is the east, and Juliet is the sun.
"""
# tiny Shakespeare's 65 characters: the config's vocab_size=65 must match the char vocab.
ALL_65 = "\n !$&',-.3:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def _make_scratch(path: str) -> None:
    os.symlink(os.path.join(ROOT, "configs"), os.path.join(path, "configs"))
    with open(os.path.join(path, "tinyshakespeare.txt"), "w") as f:
        f.write((SHAKESPEARE + ALL_65) * 60)  # ~25 KB: enough windows of 256 + 1 for both splits
    rng = np.random.default_rng(0)
    rng.integers(0, 256, 20_000, dtype=np.uint16).tofile(os.path.join(path, "tokens.bin"))
    rng.integers(0, 96, 20_000, dtype=np.uint16).tofile(os.path.join(path, "tokens96.bin"))  # the GPT-2 fixture's vocab
    records = [{"instruction": "Add the two numbers.", "input": f"{a} + {a + 1}", "output": str(2 * a + 1)}
               for a in range(40)]
    with open(os.path.join(path, "alpaca_data.json"), "w") as f:
        json.dump(records, f)


def _run(command: str, cwd: str, env: dict) -> str:
    args = shlex.split(command.format(root=ROOT, fixtures=FIXTURES, python=sys.executable))
    if args[0] == "python":
        args[0] = sys.executable
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=1800)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"`{command}` exited {proc.returncode}:\n{out[-4000:]}"
    return out


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """The user's environment (its JAXMODELS_CACHE too: a judge trained before is reused)
    plus the repo on PYTHONPATH (as `pip install .` would) and one XLA compilation cache."""
    e = dict(os.environ)
    e["PYTHONPATH"] = ROOT + os.pathsep + e.get("PYTHONPATH", "")
    e["JAX_COMPILATION_CACHE_DIR"] = str(tmp_path_factory.mktemp("xla_cache"))
    e["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    return e


# ------------------------------------------------------------------ the tests

def test_every_readme_command_has_a_tiny_form():
    shown = readme_commands()
    missing = [c for c in shown if c not in TINY]
    stale = [c for c in TINY if c not in shown]
    assert not missing, ("README shows commands with no tiny form; add them to TINY in "
                         f"tests/test_readme.py: {missing}")
    assert not stale, f"TINY maps commands README no longer shows (remove or update them): {stale}"


@pytest.mark.parametrize("command", [pytest.param(c, marks=[pytest.mark.slow] if t.slow else [], id=c[:80])
                                     for c, t in TINY.items()])
def test_readme_command_runs(command, tmp_path, env):
    _make_scratch(str(tmp_path))
    tiny = TINY[command]
    out = "".join(step() if callable(step) else _run(step, str(tmp_path), env) for step in tiny.steps)
    for text in tiny.expect:
        assert text in out, f"{command!r}: expected {text!r} in the output:\n{out[-4000:]}"
