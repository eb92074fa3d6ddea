"""Hugging Face BitNet (model_type "bitnet") folders <-> jaxmodels.models.bitnet params.

    model, params = from_hf(folder, hf_config)   # either released layout, detected per tensor
    to_hf(model, params, out, layout="master")   # latent weights (bf16), quantised on the fly
    to_hf(model, params, out, layout="packed")   # uint8 ternary + weight_scale (inference)
    packed = pack_params(cfg, params)            # latent params -> the packed=True model's

The two layouts Microsoft released:
  master  (microsoft/bitnet-b1.58-2B-4T-bf16) every projection's latent weight [out, in],
          bf16. Imported into a packed=False model (trainable; BitLinear quantises in the
          forward). transformers computes b1.58 from it with quantization_config
          autobitlinear / online (without one it would run the weights unquantised).
  packed  (microsoft/bitnet-b1.58-2B-4T) `weight` uint8 [out/4, in], four ternary values
          per byte (jaxmodels.layers.ternary_pack), and `weight_scale` [1]. Imported into a
          packed=True model (inference only: the latent weights are not in the file).
          quantization_config.linear_class says what weight_scale means:
            "autobitlinear": y = (x~ @ W_q^T) * weight_scale   -> weight_scale = mean|W|
            "bitlinear":     y = (x~ @ W_q^T) / weight_scale   -> weight_scale = 1 / mean|W|
          We store mean|W| (the dequantisation multiplier) and export autobitlinear, the
          class the released config names.
Embeddings, norms and the head are plain tensors in both. Tensors are read one at a time.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from jaxmodels.config import ConfigError
from jaxmodels.convert.safetensors_io import SafetensorsFolder, save_folder
from jaxmodels.layers.bitlinear import weight_quant
from jaxmodels.layers.ternary_pack import pack_ternary, packed_rows

LAYOUTS = ("master", "packed")
# Our block path -> HF name under "model.layers.{i}.".
NORMS = {"attn_norm": "input_layernorm", "mlp_norm": "post_attention_layernorm",
         "attn/sub_norm": "self_attn.attn_sub_norm", "mlp/sub_norm": "mlp.ffn_sub_norm"}
PROJ_HF = {("attn", "q_proj"): "self_attn.q_proj", ("attn", "k_proj"): "self_attn.k_proj",
           ("attn", "v_proj"): "self_attn.v_proj", ("attn", "o_proj"): "self_attn.o_proj",
           ("mlp", "gate_proj"): "mlp.gate_proj", ("mlp", "up_proj"): "mlp.up_proj",
           ("mlp", "down_proj"): "mlp.down_proj"}


def config_from_hf(hf: Mapping[str, Any]) -> dict:
    """The bitnet Config fields (a dict) described by an HF config.json."""
    if hf.get("model_type") != "bitnet":
        raise ConfigError(f"model_type {hf.get('model_type')!r} is not 'bitnet'")
    if hf.get("attention_bias", False):
        raise ConfigError("attention_bias=True is not part of BitNet (no biases); unsupported")
    act = hf.get("hidden_act", "relu2")
    if act not in ("relu2", "silu"):
        raise ConfigError(f"hidden_act {act!r} unsupported; BitNet uses relu2 (or silu)")
    rope = {**(hf.get("rope_scaling") or {}), **(hf.get("rope_parameters") or {})}
    if (rope.get("rope_type") or rope.get("type") or "default") != "default":
        raise ConfigError(f"rope scaling {rope!r} unsupported for bitnet (plain rope only)")
    quant = hf.get("quantization_config") or {}
    if quant.get("use_rms_norm"):
        raise ConfigError("quantization_config.use_rms_norm=True (an extra RMSNorm inside every "
                          "BitLinear) is not part of the released BitNet; unsupported")
    heads = int(hf["num_attention_heads"])
    return dict(
        vocab_size=int(hf["vocab_size"]), dim=int(hf["hidden_size"]), n_layers=int(hf["num_hidden_layers"]),
        n_heads=heads, n_kv_heads=int(hf.get("num_key_value_heads") or heads),
        head_dim=int(hf.get("head_dim") or 0), hidden_dim=int(hf["intermediate_size"]), hidden_act=act,
        norm_eps=float(hf.get("rms_norm_eps", 1e-5)), max_len=int(hf.get("max_position_embeddings", 4096)),
        rope_theta=float(rope.get("rope_theta", hf.get("rope_theta", 500000.0))),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)))


def hf_config_from(cfg, layout: str) -> dict:
    """config.json for transformers' BitNetForCausalLM (+ the quantization_config of the layout)."""
    hf = {
        "architectures": ["BitNetForCausalLM"], "model_type": "bitnet", "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.dim, "intermediate_size": cfg.hidden_dim, "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads, "num_key_value_heads": cfg.n_kv_heads, "hidden_act": cfg.hidden_act,
        "max_position_embeddings": cfg.max_len, "rms_norm_eps": cfg.norm_eps,
        "tie_word_embeddings": cfg.tie_embeddings, "attention_bias": False, "attention_dropout": 0.0,
        "rope_theta": cfg.rope_theta, "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
        "quantization_config": {"quant_method": "bitnet", "linear_class": "autobitlinear",
                                "quantization_mode": "offline" if layout == "packed" else "online"},
    }
    if cfg.head_dim:
        hf["head_dim"] = cfg.head_dim
    return hf


def _scale_is_inverse(hf: Mapping[str, Any]) -> bool:
    """True when weight_scale is 1 / mean|W| (transformers' "bitlinear" class, its default)."""
    quant = hf.get("quantization_config") or {}
    return quant.get("linear_class", "bitlinear") == "bitlinear"


def from_hf(folder: str, hf_config: Mapping[str, Any]):
    """Loads a BitNet folder; returns (module, params). Packed files give a packed=True model."""
    from jaxmodels.models.bitnet import BitNet, Config, projection_shapes

    fields = config_from_hf(hf_config)
    st = SafetensorsFolder(folder)
    probe = "model.layers.0.self_attn.q_proj.weight"
    packed = st.get(probe, dtype=None).dtype == np.uint8
    if packed and not hf_config.get("quantization_config"):
        raise ConfigError(f"{folder}: uint8 (packed) weights but no quantization_config in config.json "
                          "to say what weight_scale means")
    cfg = Config(**fields, packed=packed)
    L = cfg.n_layers
    params: dict = {"embed": st.get("model.embed_tokens.weight"), "norm": {"scale": st.get("model.norm.weight")}}
    if not cfg.tie_embeddings:
        params["lm_head"] = {"kernel": st.get("lm_head.weight").T.copy()}
    layers: dict = {"attn": {}, "mlp": {}}
    for ours, theirs in NORMS.items():
        stacked = np.stack([st.get(f"model.layers.{i}.{theirs}.weight") for i in range(L)])
        node = layers
        for key in ours.split("/")[:-1]:
            node = node[key]
        node[ours.split("/")[-1]] = {"scale": stacked}
    inverse = _scale_is_inverse(hf_config)
    for (group, name), (d_in, d_out) in projection_shapes(cfg).items():
        hf_name = PROJ_HF[(group, name)]
        if packed:
            w = np.stack([st.get(f"model.layers.{i}.{hf_name}.weight", dtype=None) for i in range(L)])
            if w.shape[1:] != (packed_rows(d_out), d_in):
                raise ConfigError(f"{hf_name}: packed shape {w.shape[1:]} != {(packed_rows(d_out), d_in)}")
            scale = np.stack([st.get(f"model.layers.{i}.{hf_name}.weight_scale").reshape(()) for i in range(L)])
            layers[group][name] = {"packed": w.astype(np.uint8),
                                   "weight_scale": (1.0 / scale if inverse else scale).astype(np.float32)}
        else:
            w = np.empty((L, d_in, d_out), np.float32)
            for i in range(L):
                w[i] = st.get(f"model.layers.{i}.{hf_name}.weight").T
            layers[group][name] = {"kernel": w}
    params["layers"] = {"attn_norm": layers.pop("attn_norm"), "mlp_norm": layers.pop("mlp_norm"), **layers}
    return BitNet(cfg), jax.tree.map(jnp.asarray, params)


def pack_params(cfg, params: Mapping) -> dict:
    """Latent (packed=False) params -> the packed=True model's params: every block projection
    quantised exactly as BitLinear's forward does (jaxmodels.layers.bitlinear.weight_quant),
    packed 4 per byte in transformers' layout, with weight_scale = mean|W|."""
    from jaxmodels.models.bitnet import projection_shapes

    quant = jax.jit(jax.vmap(weight_quant))  # over the stacked layer axis
    out = jax.tree.map(lambda x: x, dict(params))
    layers = {k: dict(v) if isinstance(v, Mapping) else v for k, v in params["layers"].items()}
    for (group, name), (_, d_out) in projection_shapes(cfg).items():
        w_q, s_w = quant(jnp.asarray(params["layers"][group][name]["kernel"]))
        w_q = np.asarray(w_q).astype(np.int8)  # [L, in, out]
        packed = np.stack([pack_ternary(w_q[i].T) for i in range(w_q.shape[0])])
        layers[group] = dict(layers[group])
        layers[group][name] = {"packed": jnp.asarray(packed),
                               "weight_scale": jnp.asarray(1.0 / np.asarray(s_w), jnp.float32)}
    out["layers"] = layers
    return out


def packed_model(model):
    """The packed=True twin of a bitnet module."""
    from jaxmodels.models.bitnet import BitNet

    return BitNet(dataclasses.replace(model.cfg, packed=True))


def to_hf(model, params: Mapping, folder: str, layout: str = "master", dtype: Any = None) -> None:
    """Writes an HF BitNet folder. layout "master": latent weights (needs a packed=False
    model), in `dtype` (default bf16, as released); "packed": uint8 + weight_scale (f32, so
    that a re-import is exact), from either kind of model. Norms, embedding and head are
    written in `dtype` for master, f32 for packed."""
    import ml_dtypes

    from jaxmodels.models.bitnet import projection_shapes

    if layout not in LAYOUTS:
        raise ConfigError(f"unknown layout {layout!r}; valid: {', '.join(LAYOUTS)}")
    cfg = model.cfg
    if layout == "master" and cfg.packed:
        raise ConfigError("a packed model has no latent weights to export as 'master'; use layout='packed'")
    if layout == "packed" and not cfg.packed:
        params = pack_params(cfg, params)
    dtype = np.dtype(ml_dtypes.bfloat16 if dtype is None and layout == "master" else (dtype or np.float32))
    host = jax.tree.map(lambda a: np.asarray(jax.device_get(a)), dict(params))
    as_dtype = lambda a: np.ascontiguousarray(np.asarray(a, np.float32).astype(dtype))  # noqa: E731
    tensors = {"model.embed_tokens.weight": as_dtype(host["embed"])}
    layers = host["layers"]
    for i in range(cfg.n_layers):
        for ours, theirs in NORMS.items():
            node = layers
            for key in ours.split("/"):
                node = node[key]
            tensors[f"model.layers.{i}.{theirs}.weight"] = as_dtype(node["scale"][i])
        for (group, name) in projection_shapes(cfg):
            leaf, prefix = layers[group][name], f"model.layers.{i}.{PROJ_HF[(group, name)]}"
            if layout == "packed":
                tensors[prefix + ".weight"] = np.ascontiguousarray(leaf["packed"][i].astype(np.uint8))
                tensors[prefix + ".weight_scale"] = np.asarray(leaf["weight_scale"][i], np.float32).reshape(1)
            else:
                tensors[prefix + ".weight"] = as_dtype(leaf["kernel"][i].T)
    tensors["model.norm.weight"] = as_dtype(host["norm"]["scale"])
    if not cfg.tie_embeddings:
        tensors["lm_head.weight"] = as_dtype(host["lm_head"]["kernel"].T)
    hf = hf_config_from(cfg, layout)
    hf["torch_dtype"] = hf["dtype"] = "bfloat16" if dtype != np.float32 else "float32"
    save_folder(tensors, folder, hf)
