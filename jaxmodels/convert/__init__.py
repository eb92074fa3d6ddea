"""Checkpoint interop with Hugging Face folders (config.json + *.safetensors).

`from_hf(dir) -> (model, params)` reads config.json's "model_type" and hands the folder to
the family converter registered below. Each converter module provides
`from_hf(folder: str, hf_config: dict) -> (model, params)` and, where supported,
`to_hf(model, params, folder)`.
"""
from __future__ import annotations

import importlib
import json
import os

from jaxmodels.config import ConfigError

CONVERTERS = {
    "gpt2": "jaxmodels.convert.gpt2",
    "bitnet": "jaxmodels.convert.bitnet",
    "llama": "jaxmodels.convert.llama",
    "mistral": "jaxmodels.convert.llama",
    "qwen2": "jaxmodels.convert.llama",
    "mixtral": "jaxmodels.convert.llama",
    "mamba": "jaxmodels.convert.mamba",
    "rwkv": "jaxmodels.convert.rwkv",
    "rwkv7": "jaxmodels.convert.rwkv7",
}


# model.name -> the converter module whose to_hf(model, params, folder) writes that family.
EXPORTERS = {
    "gpt": "jaxmodels.convert.gpt2",
    "mamba": "jaxmodels.convert.mamba",
}


class HFConfig(dict):
    """config.json as a dict whose missing keys raise a ConfigError naming the key and the
    file (not a bare KeyError from deep inside a converter)."""

    def __init__(self, values: dict, path: str):
        super().__init__(values)
        self.path = path

    def __missing__(self, key):
        raise ConfigError(f"{self.path} has no {key!r} entry, which a {self.get('model_type', '?')!r} "
                          f"model needs: the file is incomplete or from another model family")


def read_hf_config(folder: str) -> HFConfig:
    path = os.path.join(folder, "config.json")
    if not os.path.isfile(path):
        raise ConfigError(f"{folder!r} is not a Hugging Face model folder: no config.json "
                          "(expected config.json + *.safetensors, e.g. from `huggingface-cli download`)")
    try:
        with open(path) as f:
            values = json.load(f)
    except ValueError as e:
        raise ConfigError(f"{path} is not valid JSON ({e})") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path} holds a {type(values).__name__}, not a JSON object")
    return HFConfig(values, path)


def from_hf(folder: str):
    """Loads a Hugging Face folder; returns (flax module, f32 params)."""
    hf_config = read_hf_config(folder)
    model_type = hf_config.get("model_type")
    if model_type not in CONVERTERS:
        raise ConfigError(f"{folder}: model_type {model_type!r} is not supported; "
                          f"supported: {', '.join(sorted(CONVERTERS))}")
    return importlib.import_module(CONVERTERS[model_type]).from_hf(folder, hf_config)


def to_hf(model_cfg: dict, params, folder: str) -> None:
    """Writes a model (its config `model` section and params) as a Hugging Face folder."""
    from jaxmodels.models import build_model

    name = model_cfg.get("name")
    if name not in EXPORTERS:
        raise ConfigError(f"model.name={name!r} has no Hugging Face export; exportable: {', '.join(sorted(EXPORTERS))}"
                          " (BitNet: launch.export_bitnet)")
    importlib.import_module(EXPORTERS[name]).to_hf(build_model(model_cfg), params, folder)
