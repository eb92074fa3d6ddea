"""Mamba export: HF fixture -> our params -> HF folder gives back the same tensors and config,
and a run's checkpoint exports through launch.export_hf."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from jaxmodels.convert import from_hf
from jaxmodels.convert.safetensors_io import SafetensorsFolder

FIXTURE = os.path.join(os.path.dirname(__file__), "..", "fixtures", "mamba")


def test_round_trip_gives_the_hf_tensors_back(tmp_path):
    from jaxmodels.convert.mamba import to_hf

    model, params = from_hf(FIXTURE)
    to_hf(model, params, str(tmp_path))
    ours, theirs = SafetensorsFolder(str(tmp_path)), SafetensorsFolder(FIXTURE)
    assert sorted(ours.keys()) == sorted(theirs.keys())
    for name in theirs.keys():
        np.testing.assert_array_equal(ours.get(name), theirs.get(name))
        assert ours.get(name, None).shape == theirs.get(name, None).shape
    with open(os.path.join(FIXTURE, "config.json")) as f:
        hf = json.load(f)
    with open(tmp_path / "config.json") as f:
        exported = json.load(f)
    for key in ("vocab_size", "hidden_size", "num_hidden_layers", "state_size", "expand", "conv_kernel",
                "time_step_rank", "use_conv_bias", "use_bias", "layer_norm_epsilon", "tie_word_embeddings",
                "intermediate_size", "model_type", "hidden_act"):
        assert exported[key] == hf[key], key
    # transformers (5.24, measured) re-applies this init option to the weights it loads: logits
    # off by 0.9 with it on, so the export never sets it.
    assert exported["rescale_prenorm_residual"] is False
    model2, params2 = from_hf(str(tmp_path))
    assert model2 == model
    ref = np.load(os.path.join(FIXTURE, "reference.npz"))
    logits = jax.jit(model2.apply)({"params": params2}, jnp.asarray(ref["tokens"]))
    np.testing.assert_allclose(logits, ref["logits"], rtol=1e-4, atol=1e-4 * np.abs(ref["logits"]).max())


def test_launch_export_hf_from_a_converted_folder(tmp_path, capsys):
    from jaxmodels.convert.pretrained import load_pretrained, save_pretrained
    from launch.export_hf import main

    model_cfg, params = load_pretrained(FIXTURE)
    save_pretrained(model_cfg, params, str(tmp_path / "ours"))
    assert main(["--hf", str(tmp_path / "ours"), "--out", str(tmp_path / "hf")]) == 0
    assert "Hugging Face layout" in capsys.readouterr().out
    back = SafetensorsFolder(str(tmp_path / "hf"))
    np.testing.assert_array_equal(back.get("backbone.embeddings.weight"),
                                  SafetensorsFolder(FIXTURE).get("backbone.embeddings.weight"))
    # A family without an HF export is refused in one line.
    rwkv = os.path.join(os.path.dirname(__file__), "..", "fixtures", "rwkv")
    assert main(["--hf", rwkv, "--out", str(tmp_path / "x")]) == 2
    assert "has no Hugging Face export" in capsys.readouterr().err
