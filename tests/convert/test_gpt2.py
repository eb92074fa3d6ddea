"""GPT-2 import from Hugging Face folders, checked against logits/tokens that HF computed.

The fixture (tests/fixtures/gpt2/, made by tests/fixtures/make_gpt2.py with torch +
transformers) is a tiny random GPT2LMHeadModel; these tests need no torch.
"""
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import save_file

from jaxmodels import generate
from jaxmodels.config import ConfigError
from jaxmodels.convert import from_hf
from jaxmodels.convert.pretrained import load_pretrained, restore_into
from jaxmodels.convert.safetensors_io import SafetensorsFolder
from jaxmodels.models import build_model

FIXTURE = os.path.join(os.path.dirname(__file__), "..", "fixtures", "gpt2")


@pytest.fixture(scope="module")
def reference():
    return dict(np.load(os.path.join(FIXTURE, "reference.npz")))


@pytest.fixture(scope="module")
def converted():
    return from_hf(FIXTURE)


def _logits(model, params, tokens):
    return np.asarray(jax.jit(lambda p, t: model.apply({"params": p}, t))(params, tokens))


def _rel_err(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


def test_hf_logits_match(converted, reference):
    model, params = converted
    assert model.cfg.gelu == "tanh" and model.cfg.n_layer == 2 and model.cfg.block_size == 64
    assert params["h"]["attn"]["c_attn"]["kernel"].shape == (2, 32, 96)
    assert _rel_err(_logits(model, params, reference["tokens"]), reference["logits"]) <= 1e-4


def test_old_unprefixed_layout(tmp_path, converted, reference):
    """Older GPT-2 files: no `transformer.` prefix, plus the attn.bias mask buffers."""
    src = SafetensorsFolder(FIXTURE)
    tensors = {name.removeprefix("transformer."): value for name, value in src.items()}
    for i in range(2):
        tensors[f"h.{i}.attn.bias"] = np.tril(np.ones((1, 1, 64, 64), np.float32))
    save_file(tensors, str(tmp_path / "model.safetensors"))
    shutil.copy(os.path.join(FIXTURE, "config.json"), tmp_path / "config.json")
    model, params = from_hf(str(tmp_path))
    assert model == converted[0]
    jax.tree.map(np.testing.assert_array_equal, params, converted[1])
    assert _rel_err(_logits(model, params, reference["tokens"]), reference["logits"]) <= 1e-4


def test_greedy_matches_hf_generate(converted, reference):
    model, params = converted
    prompt = reference["tokens"][:, :8]
    out = np.asarray(generate.greedy(model, params, prompt, reference["greedy"].shape[1] - 8))
    np.testing.assert_array_equal(out, reference["greedy"])


def test_launch_convert_round_trip(tmp_path, converted, reference, capsys):
    from launch.convert import main

    out = str(tmp_path / "converted")
    assert main(["--hf", FIXTURE, "--out", out]) == 0
    printed = capsys.readouterr().out
    assert "'n_embd': 32," in printed and f"c.init_from = {out!r}" in printed
    model_cfg, params = load_pretrained(out)
    assert model_cfg["name"] == "gpt" and model_cfg["vocab_size"] == 96
    model = build_model(model_cfg)
    assert model == converted[0]
    assert _rel_err(_logits(model, params, reference["tokens"]), reference["logits"]) <= 1e-4
    # A raw HF folder loads through the same entry point (init_from=HF_DIR).
    hf_cfg, hf_params = load_pretrained(FIXTURE)
    assert hf_cfg == model_cfg
    jax.tree.map(np.testing.assert_array_equal, hf_params, params)
    # Loading into fresh params of the configured model checks every shape.
    fresh = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"]
    fresh = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), fresh)
    jax.tree.map(np.testing.assert_array_equal, restore_into(fresh, params, out), params)
    wider = build_model(dict(model_cfg, n_embd=64))
    fresh = jax.eval_shape(wider.init, jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"]
    with pytest.raises(ConfigError, match=r"c_attn/kernel: checkpoint \(2, 32, 96\) vs model \(2, 64, 192\)"):
        restore_into(fresh, params, out)


def test_to_hf_round_trip(tmp_path, converted):
    from jaxmodels.convert.gpt2 import to_hf

    model, params = converted
    to_hf(model, params, str(tmp_path))
    ours = SafetensorsFolder(str(tmp_path))
    theirs = SafetensorsFolder(FIXTURE)
    assert sorted(ours.keys()) == sorted(theirs.keys())
    for name in theirs.keys():
        np.testing.assert_array_equal(ours.get(name), theirs.get(name))
    model2, params2 = from_hf(str(tmp_path))
    assert model2 == model


def test_unsupported_variants_fail_loudly(tmp_path):
    shutil.copy(os.path.join(FIXTURE, "model.safetensors"), tmp_path / "model.safetensors")
    with open(os.path.join(FIXTURE, "config.json")) as f:
        config = json.load(f)
    with open(tmp_path / "config.json", "w") as f:
        json.dump(dict(config, n_inner=64, activation_function="relu"), f)
    with pytest.raises(ConfigError, match="n_inner.*|activation"):
        from_hf(str(tmp_path))
    with pytest.raises(ConfigError, match="launch.convert"):
        load_pretrained(str(tmp_path / "nowhere"))
