"""GPT-2 checkpoints: Hugging Face `GPT2LMHeadModel` folders <-> jaxmodels.models.gpt params.

HF stores the linear layers as Conv1D with weights [in, out] — the same orientation as a
flax Dense kernel, so nothing is transposed. Two key layouts exist: the current one
(`transformer.h.0.attn.c_attn.weight`, from GPT2LMHeadModel.save_pretrained) and the older
unprefixed one (`h.0.attn.c_attn.weight`, e.g. the original openai-community/gpt2 files).
The head is tied to wte; `lm_head.weight`, when stored, must equal it.
"""
from __future__ import annotations

import math
from typing import Any

import jax.numpy as jnp
import numpy as np

from jaxmodels.config import ConfigError
from jaxmodels.convert.safetensors_io import SafetensorsFolder, save_folder
from jaxmodels.models import gpt

# HF names inside one block -> our path under params["h"] (stacked on a leading layer axis).
LAYER_KEYS = {
    "ln_1.weight": ("ln_1", "scale"),
    "ln_1.bias": ("ln_1", "bias"),
    "attn.c_attn.weight": ("attn", "c_attn", "kernel"),
    "attn.c_attn.bias": ("attn", "c_attn", "bias"),
    "attn.c_proj.weight": ("attn", "c_proj", "kernel"),
    "attn.c_proj.bias": ("attn", "c_proj", "bias"),
    "ln_2.weight": ("ln_2", "scale"),
    "ln_2.bias": ("ln_2", "bias"),
    "mlp.c_fc.weight": ("mlp", "fc", "kernel"),
    "mlp.c_fc.bias": ("mlp", "fc", "bias"),
    "mlp.c_proj.weight": ("mlp", "proj", "kernel"),
    "mlp.c_proj.bias": ("mlp", "proj", "bias"),
}
TOP_KEYS = {
    "wte.weight": ("wte",),
    "wpe.weight": ("wpe",),
    "ln_f.weight": ("ln_f", "scale"),
    "ln_f.bias": ("ln_f", "bias"),
}
GELU_FROM_HF = {"gelu_new": "tanh", "gelu_pytorch_tanh": "tanh", "gelu_fast": "tanh", "gelu": "exact"}


def config_from_hf(hf_config: dict, has_bias: bool = True) -> gpt.Config:
    """Our gpt.Config for an HF GPT2Config dict; raises on variants we do not implement."""
    C = hf_config["n_embd"]
    act = hf_config.get("activation_function", "gelu_new")
    problems = []
    if act not in GELU_FROM_HF:
        problems.append(f"activation_function={act!r} (supported: {', '.join(GELU_FROM_HF)})")
    if hf_config.get("n_inner") not in (None, 4 * C):
        problems.append(f"n_inner={hf_config['n_inner']} (only 4 * n_embd)")
    if not math.isclose(hf_config.get("layer_norm_epsilon", 1e-5), 1e-5):
        problems.append(f"layer_norm_epsilon={hf_config['layer_norm_epsilon']} (only 1e-5)")
    if not hf_config.get("scale_attn_weights", True) or hf_config.get("scale_attn_by_inverse_layer_idx", False):
        problems.append("non-standard attention scaling")
    if hf_config.get("add_cross_attention", False):
        problems.append("cross-attention")
    if problems:
        raise ConfigError("GPT-2 checkpoint uses what jaxmodels' gpt does not implement: " + "; ".join(problems))
    return gpt.Config(vocab_size=hf_config["vocab_size"], block_size=hf_config["n_positions"],
                      n_layer=hf_config["n_layer"], n_head=hf_config["n_head"], n_embd=C,
                      bias=has_bias, gelu=GELU_FROM_HF[act], dropout=0.0)


def _prefix(folder: SafetensorsFolder) -> str:
    for prefix in ("transformer.", ""):
        if prefix + "wte.weight" in folder:
            return prefix
    raise ConfigError(f"{folder.folder}: no wte.weight or transformer.wte.weight; not a GPT-2 checkpoint "
                      f"(first keys: {folder.keys()[:5]})")


def _set(tree: dict, path: tuple, value) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def from_hf(folder: str, hf_config: dict):
    """Reads an HF GPT-2 folder; returns (gpt.GPT module, f32 params in the scanned layout)."""
    tensors = SafetensorsFolder(folder)
    prefix = _prefix(tensors)
    has_bias = f"{prefix}h.0.attn.c_attn.bias" in tensors
    cfg = config_from_hf(hf_config, has_bias)
    params: dict[str, Any] = {}
    for name, path in TOP_KEYS.items():
        if name.endswith(".bias") and not has_bias:
            continue
        _set(params, path, jnp.asarray(tensors.get(prefix + name)))
    for name, path in LAYER_KEYS.items():
        if name.endswith(".bias") and not has_bias:
            continue
        stacked = np.stack([tensors.get(f"{prefix}h.{i}.{name}") for i in range(cfg.n_layer)])
        _set(params, ("h",) + path, jnp.asarray(stacked))
    if "lm_head.weight" in tensors and not np.array_equal(tensors.get("lm_head.weight"),
                                                            np.asarray(params["wte"])):
        raise ConfigError(f"{folder}: lm_head.weight differs from wte; only tied heads are supported")
    expected = (cfg.vocab_size, cfg.n_embd)
    if params["wte"].shape != expected:
        raise ConfigError(f"{folder}: wte has shape {params['wte'].shape}, config.json implies {expected}")
    return gpt.GPT(cfg), params


def hf_config_from(cfg: gpt.Config) -> dict:
    """An HF GPT2Config dict describing our config (only bias=True models load in HF)."""
    return {
        "model_type": "gpt2", "architectures": ["GPT2LMHeadModel"],
        "vocab_size": cfg.vocab_size, "n_positions": cfg.block_size, "n_embd": cfg.n_embd,
        "n_layer": cfg.n_layer, "n_head": cfg.n_head, "n_inner": None,
        "activation_function": "gelu_new" if cfg.gelu == "tanh" else "gelu",
        "layer_norm_epsilon": 1e-5, "resid_pdrop": cfg.dropout, "embd_pdrop": cfg.dropout,
        "attn_pdrop": cfg.dropout, "initializer_range": 0.02, "scale_attn_weights": True,
        "tie_word_embeddings": True, "torch_dtype": "float32",
    }


def to_hf(model: gpt.GPT, params: dict, folder: str) -> None:
    """Writes params as an HF GPT2LMHeadModel folder (config.json + model.safetensors)."""
    cfg = model.cfg

    def get(path):
        node = params
        for key in path:
            node = node[key]
        return np.asarray(node, np.float32)

    tensors = {}
    for name, path in TOP_KEYS.items():
        if name.endswith(".bias") and not cfg.bias:
            continue
        tensors["transformer." + name] = get(path)
    for name, path in LAYER_KEYS.items():
        if name.endswith(".bias") and not cfg.bias:
            continue
        stacked = get(("h",) + path)
        for i in range(cfg.n_layer):
            tensors[f"transformer.h.{i}.{name}"] = stacked[i]
    save_folder(tensors, folder, hf_config_from(cfg))
