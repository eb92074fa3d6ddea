"""Hugging Face `MambaForCausalLM` folders (e.g. state-spaces/mamba-130m-hf) -> our Mamba.

Name map (per layer i, stacked on a leading [n_layer] axis):
  backbone.embeddings.weight [V, D]           -> embedding            (mamba_ssm: backbone.embedding)
  backbone.layers.i.norm.weight               -> layers/norm/scale
  backbone.layers.i.mixer.in_proj.weight [2E, D]  -> layers/mixer/in_proj/kernel [D, 2E]
  backbone.layers.i.mixer.conv1d.weight [E, 1, K] -> layers/mixer/conv1d_kernel [K, E]
  backbone.layers.i.mixer.conv1d.bias         -> layers/mixer/conv1d_bias
  backbone.layers.i.mixer.x_proj.weight       -> layers/mixer/x_proj/kernel (transposed)
  backbone.layers.i.mixer.dt_proj.{weight,bias} -> layers/mixer/dt_proj/{kernel,bias}
  backbone.layers.i.mixer.{A_log, D}          -> layers/mixer/{A_log, D}
  backbone.layers.i.mixer.out_proj.weight     -> layers/mixer/out_proj/kernel (transposed)
  backbone.norm_f.weight                      -> norm_f/scale
  lm_head.weight                              -> lm_head (only when untied)
"""
from __future__ import annotations

import numpy as np

from jaxmodels.config import ConfigError
from jaxmodels.convert.safetensors_io import SafetensorsFolder
from jaxmodels.models import mamba


def config_from_hf(hf: dict, vocab_rows: int) -> mamba.Config:
    """Our Config from an HF MambaConfig dict (vocab = the embedding's rows, no extra padding)."""
    if hf.get("hidden_act", "silu") != "silu":
        raise ConfigError(f"mamba hidden_act {hf['hidden_act']!r} is not supported (only silu)")
    d_model = hf["hidden_size"]
    rank = hf.get("time_step_rank", "auto")
    return mamba.Config(
        vocab_size=vocab_rows, d_model=d_model, n_layer=hf["num_hidden_layers"],
        d_state=hf.get("state_size", 16), expand=hf.get("expand", 2), d_conv=hf.get("conv_kernel", 4),
        dt_rank=0 if rank == "auto" else int(rank), conv_bias=hf.get("use_conv_bias", True),
        bias=hf.get("use_bias", False), norm_eps=hf.get("layer_norm_epsilon", 1e-5),
        tie_embeddings=hf.get("tie_word_embeddings", True), pad_vocab_size_multiple=1)


def from_hf(folder: str, hf_config: dict):
    """Reads an HF Mamba folder; returns (Mamba module, f32 params)."""
    st = SafetensorsFolder(folder)
    prefix = "backbone."
    emb_name = prefix + ("embeddings.weight" if prefix + "embeddings.weight" in st else "embedding.weight")
    emb = st.get(emb_name)
    cfg = config_from_hf(hf_config, emb.shape[0])
    L = cfg.n_layer

    def stack(name: str, fn=lambda x: x) -> np.ndarray:
        return np.stack([fn(st.get(f"{prefix}layers.{i}.{name}")) for i in range(L)])

    mixer = {
        "in_proj": {"kernel": stack("mixer.in_proj.weight", np.transpose)},
        "conv1d_kernel": stack("mixer.conv1d.weight", lambda w: w[:, 0, :].T),
        "x_proj": {"kernel": stack("mixer.x_proj.weight", np.transpose)},
        "dt_proj": {"kernel": stack("mixer.dt_proj.weight", np.transpose),
                    "bias": stack("mixer.dt_proj.bias")},
        "A_log": stack("mixer.A_log"),
        "D": stack("mixer.D"),
        "out_proj": {"kernel": stack("mixer.out_proj.weight", np.transpose)},
    }
    if cfg.conv_bias:
        mixer["conv1d_bias"] = stack("mixer.conv1d.bias")
    if cfg.bias:
        mixer["in_proj"]["bias"] = stack("mixer.in_proj.bias")
        mixer["out_proj"]["bias"] = stack("mixer.out_proj.bias")
    params = {
        "embedding": emb,
        "layers": {"norm": {"scale": stack("norm.weight")}, "mixer": mixer},
        "norm_f": {"scale": st.get(prefix + "norm_f.weight")},
    }
    if not cfg.tie_embeddings:
        params["lm_head"] = st.get("lm_head.weight")
    return mamba.Mamba(cfg), params
