"""Imports Hugging Face caption encoders into models/t5.py and models/clip.py.

    model, params = load_text_encoder("path/to/t5-v1_1-xxl")   # or a CLIP folder

T5: a T5EncoderModel or a full T5 (the decoder is ignored) folder, v1.1 / Flan layout
(gated-gelu) or the original (relu). CLIP: a CLIPTextModel folder (model_type
"clip_text_model", tensors with or without the "text_model." prefix) or a full CLIP
model (its text tower). Linear weights [out, in] -> kernels [in, out].
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxmodels.config import ConfigError
from jaxmodels.convert.safetensors_io import SafetensorsFolder
from jaxmodels.models import clip as clip_model
from jaxmodels.models import t5 as t5_model


def _folder_reader(folder: str, prefixes: tuple[str, ...]) -> Callable[[str], np.ndarray]:
    tensors = SafetensorsFolder(folder)

    def get(name: str) -> np.ndarray:
        for prefix in prefixes:
            if prefix + name in tensors:
                return tensors.get(prefix + name)
        raise ConfigError(f"{folder}: tensor {name!r} is missing (looked under prefixes {list(prefixes)}); "
                          "the folder does not match its config.json")
    return get


def t5_config(hf: dict) -> t5_model.Config:
    proj = hf.get("feed_forward_proj", "relu")
    if proj not in ("relu", "gated-gelu"):
        raise ConfigError(f"T5 feed_forward_proj {proj!r} is not supported (relu, gated-gelu)")
    return t5_model.Config(
        vocab_size=int(hf["vocab_size"]), d_model=int(hf["d_model"]), d_kv=int(hf["d_kv"]), d_ff=int(hf["d_ff"]),
        num_layers=int(hf["num_layers"]), num_heads=int(hf["num_heads"]),
        relative_attention_num_buckets=int(hf.get("relative_attention_num_buckets", 32)),
        relative_attention_max_distance=int(hf.get("relative_attention_max_distance", 128)),
        layer_norm_epsilon=float(hf.get("layer_norm_epsilon", 1e-6)), gated=proj == "gated-gelu")


def t5_params(folder: str, cfg: t5_model.Config) -> dict:
    get = _folder_reader(folder, ("",))
    try:
        embed = get("shared.weight")
    except ConfigError:
        embed = get("encoder.embed_tokens.weight")
    lin = lambda name: {"kernel": get(name + ".weight").T}  # noqa: E731
    bias = get("encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight")
    params = {"embed": {"embedding": embed}, "relative_bias": {"embedding": bias},
              "final_norm": {"scale": get("encoder.final_layer_norm.weight")}}
    for i in range(cfg.num_layers):
        b = f"encoder.block.{i}.layer"
        block = {n: lin(f"{b}.0.SelfAttention.{n}") for n in ("q", "k", "v", "o")}
        block["attn_norm"] = {"scale": get(f"{b}.0.layer_norm.weight")}
        block["ff_norm"] = {"scale": get(f"{b}.1.layer_norm.weight")}
        for n in (("wi_0", "wi_1", "wo") if cfg.gated else ("wi", "wo")):
            block[n] = lin(f"{b}.1.DenseReluDense.{n}")
        params[f"block_{i}"] = block
    return params


def clip_config(hf: dict) -> clip_model.Config:
    if hf.get("model_type") == "clip":   # a full CLIP model: its text tower
        hf = dict(hf.get("text_config") or {})
    return clip_model.make_config(dict(
        vocab_size=int(hf.get("vocab_size", 49408)), hidden_size=int(hf.get("hidden_size", 512)),
        intermediate_size=int(hf.get("intermediate_size", 2048)),
        num_hidden_layers=int(hf.get("num_hidden_layers", 12)),
        num_attention_heads=int(hf.get("num_attention_heads", 8)),
        max_position_embeddings=int(hf.get("max_position_embeddings", 77)),
        hidden_act=hf.get("hidden_act", "quick_gelu"), layer_norm_eps=float(hf.get("layer_norm_eps", 1e-5)),
        eos_token_id=int(hf.get("eos_token_id", 2))))


def clip_params(folder: str, cfg: clip_model.Config) -> dict:
    get = _folder_reader(folder, ("text_model.", ""))
    lin = lambda name: {"kernel": get(name + ".weight").T, "bias": get(name + ".bias")}  # noqa: E731
    norm = lambda name: {"scale": get(name + ".weight"), "bias": get(name + ".bias")}  # noqa: E731
    params = {"token_embed": {"embedding": get("embeddings.token_embedding.weight")},
              "pos_embed": {"embedding": get("embeddings.position_embedding.weight")},
              "final_norm": norm("final_layer_norm")}
    for i in range(cfg.num_hidden_layers):
        p = f"encoder.layers.{i}"
        params[f"layer_{i}"] = {"q": lin(f"{p}.self_attn.q_proj"), "k": lin(f"{p}.self_attn.k_proj"),
                                "v": lin(f"{p}.self_attn.v_proj"), "out": lin(f"{p}.self_attn.out_proj"),
                                "norm1": norm(f"{p}.layer_norm1"), "norm2": norm(f"{p}.layer_norm2"),
                                "fc1": lin(f"{p}.mlp.fc1"), "fc2": lin(f"{p}.mlp.fc2")}
    return params


def _checked(model, params: dict, folder: str) -> dict:
    """params as f32 jax arrays, after checking tree and shapes against the module."""
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32)))["params"]

    def check(path, want, got):
        if tuple(got.shape) != tuple(want.shape):
            raise ConfigError(f"{folder}: {jax.tree_util.keystr(path)} has shape {got.shape}, the config says "
                              f"{want.shape}")
        return jnp.asarray(got, jnp.float32)

    if jax.tree.structure(shapes) != jax.tree.structure(params):
        raise ConfigError(f"{folder}: the converted tensors do not form the model's parameter tree")
    return jax.tree_util.tree_map_with_path(check, shapes, params)


def load_text_encoder(folder: str, dtype: str = "float32"):
    """(module, params) of a T5 or CLIP text encoder folder; module.apply({"params": p},
    tokens, mask) gives T5's hidden states, or CLIP's {"hidden", "penultimate", "pooled"}."""
    import dataclasses

    from jaxmodels.convert import read_hf_config

    hf = dict(read_hf_config(folder))
    kind = hf.get("model_type")
    if kind == "t5":
        cfg = dataclasses.replace(t5_config(hf), dtype=dtype)
        model = t5_model.T5Encoder(cfg)
        return model, _checked(model, t5_params(folder, cfg), folder)
    if kind in ("clip_text_model", "clip"):
        cfg = dataclasses.replace(clip_config(hf), dtype=dtype)
        model = clip_model.CLIPTextEncoder(cfg)
        return model, _checked(model, clip_params(folder, cfg), folder)
    raise ConfigError(f"{folder}: model_type {kind!r} is not a supported caption encoder (t5, clip_text_model, clip)")
