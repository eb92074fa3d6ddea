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
}


def read_hf_config(folder: str) -> dict:
    path = os.path.join(folder, "config.json")
    if not os.path.isfile(path):
        raise ConfigError(f"{folder!r} is not a Hugging Face model folder: no config.json "
                          "(expected config.json + *.safetensors, e.g. from `huggingface-cli download`)")
    with open(path) as f:
        return json.load(f)


def from_hf(folder: str):
    """Loads a Hugging Face folder; returns (flax module, f32 params)."""
    hf_config = read_hf_config(folder)
    model_type = hf_config.get("model_type")
    if model_type not in CONVERTERS:
        raise ConfigError(f"{folder}: model_type {model_type!r} is not supported; "
                          f"supported: {', '.join(sorted(CONVERTERS))}")
    return importlib.import_module(CONVERTERS[model_type]).from_hf(folder, hf_config)
