"""One train step on meshes (8,1,1), (2,4,1), (2,2,2) of 8 forced host devices equals the
single-device step, and params and optimizer state are really split (shard shapes read from
the live arrays). Each family runs in its own subprocess: the device count is fixed when jax
is imported."""
import json
import os
import subprocess
import sys

import pytest

from tests.train.util import ROOT

# (spec, overrides, {mesh: {param path: per-device shard shape}})
CASES = {
    "gpt": ("configs/gpt_shakespeare_char.py:smoke", [], {
        "8x1x1": {"h/attn/c_attn/kernel": [2, 32, 96], "wte": [256, 32]},
        "2x4x1": {"h/attn/c_attn/kernel": [2, 8, 96], "h/mlp/proj/kernel": [2, 128, 8], "wte": [256, 8],
                  "h/ln_1/scale": [2, 32]},
        "2x2x2": {"h/attn/c_attn/kernel": [2, 16, 48], "h/attn/c_proj/kernel": [2, 16, 16],
                  "h/mlp/fc/kernel": [2, 16, 64], "h/mlp/proj/kernel": [2, 64, 16], "wte": [128, 16]},
    }),
    "llama": ("configs/llama_lora_tiny.py:smoke", ["model.lora_rank=0"], {  # full fine-tune
        "8x1x1": {"layers/attn/q_proj/kernel": [2, 64, 64]},
        "2x4x1": {"layers/attn/q_proj/kernel": [2, 16, 64], "layers/mlp/down_proj/kernel": [2, 128, 16],
                  "embed": [256, 16]},
        "2x2x2": {"layers/attn/q_proj/kernel": [2, 32, 32], "layers/attn/k_proj/kernel": [2, 32, 16],
                  "layers/attn/o_proj/kernel": [2, 32, 32], "layers/mlp/gate_proj/kernel": [2, 32, 64],
                  "layers/mlp/down_proj/kernel": [2, 64, 32], "lm_head/kernel": [32, 128]},
    }),
    "mamba": ("configs/mamba_130m.py:smoke", [], {  # FSDP only: largest divisible dim
        "8x1x1": {"layers/mixer/in_proj/kernel": [2, 32, 128]},
        "2x4x1": {"layers/mixer/in_proj/kernel": [2, 32, 32], "layers/mixer/out_proj/kernel": [2, 16, 32],
                  "embedding": [64, 32], "layers/mixer/A_log": [2, 64, 4]},
        "2x2x2": {"layers/mixer/in_proj/kernel": [2, 32, 64], "embedding": [128, 32]},
    }),
    "dit": ("configs/dit_small.py:smoke", [], {
        "8x1x1": {"blocks/attn/qkv/kernel": [2, 32, 96]},
        "2x4x1": {"blocks/attn/qkv/kernel": [2, 8, 96], "t_embedder/fc1/kernel": [64, 32]},
        "2x2x2": {"blocks/attn/qkv/kernel": [2, 16, 48], "blocks/attn/proj/kernel": [2, 16, 16],
                  "blocks/adaLN_modulation/kernel": [2, 16, 96], "blocks/mlp/proj/kernel": [2, 64, 16]},
    }),
}


def run_mesh_step(spec: str, overrides: list[str]) -> dict:
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "PYTHONPATH": ROOT}
    proc = subprocess.run([sys.executable, "-m", "tests.sharding.mesh_step", os.path.join(ROOT, spec), *overrides],
                          cwd=ROOT, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


def check(family: str) -> None:
    spec, overrides, expected = CASES[family]
    result = run_mesh_step(spec, overrides)
    for mesh, shapes in expected.items():
        got = result["meshes"][mesh]
        assert got["params_diff"] < 1e-5 and got["opt_diff"] < 1e-5 and got["loss_diff"] < 1e-5, (mesh, got)
        for path, shape in shapes.items():
            assert got["params"][path] == shape, (mesh, path, got["params"][path])
        # Adam's moments live exactly where their params do.
        moments = {k.split("/mu/", 1)[1]: v for k, v in got["opt_state"].items() if "/mu/" in k}
        assert moments == got["params"], mesh
    # Data parallel alone replicates (its shards are the full shapes); fsdp=4 holds under half
    # of the params per device, (2,2,2) (fsdp 2 x tensor 2) under 60%.
    full = sum(_size(s) for s in result["meshes"]["8x1x1"]["params"].values())
    for mesh, limit in (("2x4x1", 0.5), ("2x2x2", 0.6)):
        held = sum(_size(s) for s in result["meshes"][mesh]["params"].values())
        assert held < limit * full, (mesh, held, full)


def _size(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def test_gpt_step_on_meshes_equals_single_device():
    check("gpt")


@pytest.mark.slow
@pytest.mark.parametrize("family", ["llama", "mamba", "dit"])
def test_step_on_meshes_equals_single_device(family):
    check(family)
