"""Hugging Face `MambaForCausalLM` folders (e.g. state-spaces/mamba-130m-hf) <-> our Mamba:
`from_hf` reads one, `to_hf` writes one (a fine-tuned run back to the HF layout).

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
from jaxmodels.convert.safetensors_io import SafetensorsFolder, save_folder
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


# (our path under layers/, HF name under backbone.layers.i., to_hf transform), for to_hf.
LAYER_KEYS = (
    (("norm", "scale"), "norm.weight", lambda x: x),
    (("mixer", "in_proj", "kernel"), "mixer.in_proj.weight", np.transpose),
    (("mixer", "in_proj", "bias"), "mixer.in_proj.bias", lambda x: x),
    (("mixer", "conv1d_kernel"), "mixer.conv1d.weight", lambda k: k.T[:, None, :]),  # [K, E] -> [E, 1, K]
    (("mixer", "conv1d_bias"), "mixer.conv1d.bias", lambda x: x),
    (("mixer", "x_proj", "kernel"), "mixer.x_proj.weight", np.transpose),
    (("mixer", "dt_proj", "kernel"), "mixer.dt_proj.weight", np.transpose),
    (("mixer", "dt_proj", "bias"), "mixer.dt_proj.bias", lambda x: x),
    (("mixer", "A_log"), "mixer.A_log", lambda x: x),
    (("mixer", "D"), "mixer.D", lambda x: x),
    (("mixer", "out_proj", "kernel"), "mixer.out_proj.weight", np.transpose),
    (("mixer", "out_proj", "bias"), "mixer.out_proj.bias", lambda x: x),
)


def hf_config_from(cfg: mamba.Config) -> dict:
    """An HF MambaConfig dict for our Config (vocab = the embedding's rows, padding included)."""
    return {
        "architectures": ["MambaForCausalLM"], "model_type": "mamba",
        "vocab_size": cfg.padded_vocab, "hidden_size": cfg.d_model, "num_hidden_layers": cfg.n_layer,
        "state_size": cfg.d_state, "expand": cfg.expand, "intermediate_size": cfg.d_inner,
        "conv_kernel": cfg.d_conv, "time_step_rank": cfg.rank, "use_conv_bias": cfg.conv_bias,
        "use_bias": cfg.bias, "layer_norm_epsilon": cfg.norm_eps, "hidden_act": "silu",
        "tie_word_embeddings": cfg.tie_embeddings, "residual_in_fp32": True,
        "time_step_min": cfg.dt_min, "time_step_max": cfg.dt_max, "time_step_floor": cfg.dt_init_floor,
        "time_step_scale": cfg.dt_scale,
        # An init-only option; switched on, transformers may rescale out_proj as it loads.
        "rescale_prenorm_residual": False,
        "dtype": "float32",
    }


def to_hf(model: mamba.Mamba, params: dict, folder: str) -> None:
    """Writes params as an HF MambaForCausalLM folder (config.json + model.safetensors, f32)."""
    cfg = model.cfg
    f32 = lambda x: np.asarray(x, np.float32)  # noqa: E731
    tensors = {"backbone.embeddings.weight": f32(params["embedding"])}
    for path, name, transform in LAYER_KEYS:
        node = params["layers"]
        for key in path:
            node = node.get(key) if isinstance(node, dict) or hasattr(node, "get") else None
            if node is None:
                break
        if node is None:  # an optional tensor this model does not have (biases)
            continue
        stacked = f32(node)
        for i in range(cfg.n_layer):
            tensors[f"backbone.layers.{i}.{name}"] = transform(stacked[i])
    tensors["backbone.norm_f.weight"] = f32(params["norm_f"]["scale"])
    if not cfg.tie_embeddings:
        tensors["lm_head.weight"] = f32(params["lm_head"])
    save_folder(tensors, folder, hf_config_from(cfg))
