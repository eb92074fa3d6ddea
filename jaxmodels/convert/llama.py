"""Hugging Face LLaMA / Mistral / Qwen2 / Mixtral folders <-> jaxmodels.models.llama params.

    model, params = from_hf(folder, hf_config)                 # f32 base model
    model, params = from_hf(folder, hf_config, quant="nf4")    # NF4 base, quantised per tensor
    params = load_into(fresh_params, folder, cfg)              # fill a (LoRA/QLoRA) model's base
    to_hf(model, params, out_folder)                           # merged f32 folder transformers loads

Tensors are read one at a time through SafetensorsFolder (single file or sharded with an
index, f32 or bf16: safetensors' numpy loader returns ml_dtypes.bfloat16, cast to f32 per
tensor), transposed to our [in, out] kernels and written into a preallocated stacked
[n_layers, ...] array, so the host never holds the model twice; with quant="nf4" each
projection is quantised as it is read, so only one f32 matrix exists at a time.
Mixtral's MoE tensors are mapped by jaxmodels.convert.mixtral (hooks marked "Mixtral").
"""
from __future__ import annotations

import dataclasses
import os
import shutil
from typing import Any, Callable, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np

from jaxmodels.config import ConfigError
from jaxmodels.convert import mixtral
from jaxmodels.convert.safetensors_io import SafetensorsFolder, save_folder
from jaxmodels.layers import quant
from jaxmodels.layers.lora import LORA_LEAVES, merge_lora

MODEL_TYPES = ("llama", "mistral", "qwen2", "mixtral")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "tokenizer.model", "generation_config.json")

# Our module path -> HF name (per layer: under "model.layers.{i}.").
TOP_LEVEL = {"embed": "model.embed_tokens", "norm": "model.norm", "lm_head": "lm_head"}
PER_LAYER = {
    "attn_norm": "input_layernorm", "mlp_norm": "post_attention_layernorm",
    "attn/q_proj": "self_attn.q_proj", "attn/k_proj": "self_attn.k_proj",
    "attn/v_proj": "self_attn.v_proj", "attn/o_proj": "self_attn.o_proj",
    "mlp/gate_proj": "mlp.gate_proj", "mlp/up_proj": "mlp.up_proj", "mlp/down_proj": "mlp.down_proj",
}


def rope_fields(hf: Mapping[str, Any]) -> dict:
    """Our rope fields from either layout: new `rope_parameters` (transformers >= 5, holds
    rope_theta too) or old top-level `rope_theta` + `rope_scaling` (may be null)."""
    params = dict(hf.get("rope_parameters") or {})
    scaling = dict(hf.get("rope_scaling") or {})
    merged = {**scaling, **params}
    theta = merged.get("rope_theta", hf.get("rope_theta", 10000.0))
    kind = merged.get("rope_type", merged.get("type", "default")) or "default"
    out = {"rope_theta": float(theta), "rope_type": kind}
    if kind != "default":
        out["rope_factor"] = float(merged["factor"])
    if kind == "llama3":
        out.update(rope_low_freq_factor=float(merged.get("low_freq_factor", 1.0)),
                   rope_high_freq_factor=float(merged.get("high_freq_factor", 4.0)),
                   rope_original_max_len=int(merged.get("original_max_position_embeddings", 8192)))
    return out


def config_from_hf(hf: Mapping[str, Any]) -> dict:
    """The llama Config fields (a dict) described by an HF config.json."""
    model_type = hf.get("model_type")
    if model_type not in MODEL_TYPES:
        raise ConfigError(f"model_type {model_type!r} is not a LLaMA-family model; supported: {MODEL_TYPES}")
    if hf.get("hidden_act", "silu") != "silu":
        raise ConfigError(f"hidden_act {hf['hidden_act']!r} unsupported (LLaMA-family models use silu)")
    heads = int(hf["num_attention_heads"])
    fields = dict(
        vocab_size=int(hf["vocab_size"]), dim=int(hf["hidden_size"]),
        n_layers=int(hf["num_hidden_layers"]), n_heads=heads,
        n_kv_heads=int(hf.get("num_key_value_heads") or heads),
        head_dim=int(hf.get("head_dim") or 0), hidden_dim=int(hf["intermediate_size"]),
        norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        max_len=int(hf.get("max_position_embeddings", 4096)),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        mlp_bias=bool(hf.get("mlp_bias", False)),
        **rope_fields(hf),
    )
    if fields["head_dim"] == fields["dim"] // heads:
        fields["head_dim"] = 0
    if model_type == "qwen2":
        fields["qkv_bias"] = True  # Qwen2 always has q/k/v biases (no config switch)
        if hf.get("use_sliding_window", False):
            raise ConfigError("Qwen2 with use_sliding_window=true (per-layer windows) is not supported")
    elif hf.get("attention_bias", False):
        fields.update(qkv_bias=True, o_bias=True)
    if model_type in ("mistral", "mixtral") and hf.get("sliding_window"):
        fields["sliding_window"] = int(hf["sliding_window"])
    if model_type == "mixtral":
        fields.update(mixtral.config_fields(hf))
    return fields


def _paths(tree: Mapping, prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_paths(value, name + "/"))
        else:
            out[name] = value
    return out


def _set(tree: dict, path: str, value) -> None:
    *parents, leaf = path.split("/")
    for key in parents:
        tree = tree.setdefault(key, {})
    tree[leaf] = value


def hf_tensor_reader(folder: str) -> Callable[[str, Optional[int]], np.ndarray]:
    """read(our module path + "/" + leaf, layer) -> f32 numpy in our layout, from an HF folder."""
    st = SafetensorsFolder(folder)

    def read(module_leaf: str, layer: Optional[int]) -> np.ndarray:
        module, leaf = module_leaf.rsplit("/", 1) if "/" in module_leaf else (module_leaf, "")
        if module.split("/")[0] == "moe":  # Mixtral ("moe/gate_proj/kernel" when NF4)
            from jaxmodels.convert import read_hf_config
            experts = int(read_hf_config(folder)["num_local_experts"])
            return mixtral.read(st.get, module_leaf.split("/")[1], layer, experts)
        if layer is None:
            base = TOP_LEVEL[module_leaf if module_leaf == "embed" else module]
        else:
            base = f"model.layers.{layer}.{PER_LAYER[module]}"
        if module_leaf == "embed":
            return st.get(f"{base}.weight")
        if leaf == "kernel":
            return np.ascontiguousarray(st.get(f"{base}.weight").T)
        if leaf == "scale":
            return st.get(f"{base}.weight")
        if leaf == "bias":
            return st.get(f"{base}.bias")
        raise KeyError(module_leaf)

    return read


def _module_leaf(path: str) -> tuple[bool, str]:
    """("layers/attn/q_proj/kernel") -> (True, "attn/q_proj/kernel")."""
    if path.startswith("layers/"):
        return True, path[len("layers/"):]
    return False, path


def fill_params(fresh: Mapping, read: Callable[[str, Optional[int]], np.ndarray],
                n_layers: int) -> dict:
    """`fresh` (arrays or ShapeDtypeStructs) with every base leaf read through `read`.

    LoRA leaves keep their fresh values. NF4 groups ("kernel_nf4/...") are filled by
    quantising the f32 kernel that `read` returns, one layer at a time.
    """
    flat = _paths(fresh)
    out: dict = {}
    done_nf4 = set()
    for path, leaf in flat.items():
        name = path.rsplit("/", 1)[-1]
        if name in LORA_LEAVES:
            _set(out, path, leaf)
            continue
        parts = path.split("/")
        if "kernel_nf4" in parts:
            group = "/".join(parts[: parts.index("kernel_nf4") + 1])
            if group in done_nf4:
                continue
            done_nf4.add(group)
            stacked, module_leaf = _module_leaf(group.replace("kernel_nf4", "kernel"))
            leaves = {k.split("/")[-1]: v for k, v in flat.items() if k.startswith(group + "/")}
            arrays = {k: np.empty(v.shape, v.dtype) for k, v in leaves.items()}
            for i in range(n_layers if stacked else 1):
                q = quant.nf4_quantize(read(module_leaf, i if stacked else None), xp=np)
                for k in arrays:
                    if stacked:
                        arrays[k][i] = q[k]
                    else:
                        arrays[k][...] = q[k]
            for k, v in arrays.items():
                _set(out, f"{group}/{k}", v)
            continue
        stacked, module_leaf = _module_leaf(path)
        array = np.empty(leaf.shape, np.float32)
        for i in range(n_layers if stacked else 1):
            value = read(module_leaf, i if stacked else None)
            target = array[i] if stacked else array
            if value.shape != target.shape:
                raise ConfigError(f"{path}: checkpoint shape {value.shape} vs model {target.shape} "
                                  "(the model section does not match the checkpoint)")
            target[...] = value
        _set(out, path, array.astype(leaf.dtype))
    return out


def abstract_params(model) -> dict:
    """ShapeDtypeStructs of the model's params (no allocation)."""
    tokens = jax.ShapeDtypeStruct((1, 1), jnp.int32)
    return jax.eval_shape(lambda t: model.init(jax.random.key(0), t), tokens)["params"]


def load_into(params: Mapping, folder: str, cfg) -> dict:
    """Fills a model's params (fresh arrays or abstract shapes) from an HF folder or a
    `launch.convert` output; LoRA leaves keep their values, NF4 leaves are quantised."""
    from jaxmodels.convert import pretrained

    if pretrained.is_pretrained_dir(folder):
        _, loaded = pretrained.load_pretrained(folder)
        loaded_flat = _paths(loaded)

        def read(module_leaf: str, layer: Optional[int]) -> np.ndarray:
            key = ("layers/" if layer is not None else "") + module_leaf
            if key not in loaded_flat and key.startswith("layers/moe/"):
                key = key[: -len("/kernel")] if key.endswith("/kernel") else key  # NF4 experts
            if key not in loaded_flat:
                raise ConfigError(f"{folder}: no tensor {key!r} (has e.g. {sorted(loaded_flat)[:4]})")
            value = np.asarray(loaded_flat[key], np.float32)
            return value if layer is None else value[layer]
    else:
        from jaxmodels.convert import read_hf_config
        check_matches(cfg, config_from_hf(read_hf_config(folder)), folder)
        read = hf_tensor_reader(folder)
    return fill_params(params, read, cfg.n_layers)


def check_matches(cfg, hf_fields: Mapping[str, Any], folder: str) -> None:
    """Raises ConfigError when the model config differs from the checkpoint's in anything
    that changes the function (eps, rope, window, biases...), not just in shapes."""
    diffs = []
    for key, value in hf_fields.items():
        ours = cfg.dh if key == "head_dim" else getattr(cfg, key)
        theirs = (value or cfg.dim // cfg.n_heads) if key == "head_dim" else value
        if key == "max_len":
            continue  # only bounds the decode cache
        same = np.isclose(ours, theirs, rtol=1e-6) if isinstance(theirs, float) else ours == theirs
        if not same:
            diffs.append(f"model.{key}={ours!r} but the checkpoint has {theirs!r}")
    if diffs:
        raise ConfigError(f"init_from {folder!r} does not match the model section: " + "; ".join(diffs))


def from_hf(folder: str, hf_config: Mapping[str, Any], **overrides):
    """(Llama module, params) from an HF folder; overrides set Config fields (quant="nf4",
    dtype, remat, ...). LoRA settings are refused here: add adapters via a config and
    init_from (the adapters are fresh, not in the checkpoint)."""
    from jaxmodels.models.llama import Config, Llama

    if overrides.get("lora_rank", 0):
        raise ConfigError("from_hf loads base models; set lora_rank in a config that uses init_from")
    fields = config_from_hf(hf_config)
    if hf_config.get("model_type") == "mixtral":
        fields.update(mixtral.training_fields(hf_config))
    cfg = Config(**{**fields, **overrides})
    model = Llama(cfg)
    return model, load_into(abstract_params(model), folder, cfg)


def load_tokenizer(folder: str):
    """The folder's tokenizer.json as a `tokenizers.Tokenizer`."""
    from tokenizers import Tokenizer

    path = os.path.join(folder, "tokenizer.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{folder!r} has no tokenizer.json (only fast tokenizers are read)")
    return Tokenizer.from_file(path)


def base_params(model, params: Mapping) -> dict:
    """Plain f32 base params: adapters merged in, NF4 kernels de-quantised (numpy)."""
    cfg = model.cfg
    params = merge_lora(jax.device_get(params), cfg.lora_rank or 1, cfg.lora_alpha)
    shapes = _paths(abstract_params(model.clone(cfg=dataclasses.replace(cfg, quant="none", lora_rank=0))))
    out: dict = {}
    flat = _paths(params)
    done = set()
    for path, leaf in flat.items():
        parts = path.split("/")
        if "kernel_nf4" not in parts:
            _set(out, path, np.asarray(leaf, np.float32))
            continue
        group = "/".join(parts[: parts.index("kernel_nf4") + 1])
        kpath = group.replace("kernel_nf4", "kernel")
        if kpath in done:
            continue
        done.add(kpath)
        q = {k.split("/")[-1]: np.asarray(v) for k, v in flat.items() if k.startswith(group + "/")}
        shape = shapes[kpath].shape
        if kpath.startswith("layers/"):
            value = np.stack([quant.nf4_dequantize({k: v[i] for k, v in q.items()}, shape[1:], np.float32, xp=np)
                              for i in range(shape[0])])
        else:
            value = quant.nf4_dequantize(q, shape, np.float32, xp=np)
        _set(out, kpath, value)
    return out


def hf_config_from(cfg) -> dict:
    """An HF config.json dict for our Config (llama, or mistral / qwen2 when they apply)."""
    if cfg.is_moe:
        model_type, arch = "mixtral", "MixtralForCausalLM"
    elif cfg.sliding_window:
        model_type, arch = "mistral", "MistralForCausalLM"
    elif cfg.qkv_bias and not cfg.o_bias:
        model_type, arch = "qwen2", "Qwen2ForCausalLM"
    else:
        model_type, arch = "llama", "LlamaForCausalLM"
    rope = {"rope_type": cfg.rope_type, "rope_theta": cfg.rope_theta}
    if cfg.rope_type != "default":
        rope["factor"] = cfg.rope_factor
    if cfg.rope_type == "llama3":
        rope.update(low_freq_factor=cfg.rope_low_freq_factor, high_freq_factor=cfg.rope_high_freq_factor,
                    original_max_position_embeddings=cfg.rope_original_max_len)
    hf = dict(
        architectures=[arch], model_type=model_type, vocab_size=cfg.vocab_size,
        hidden_size=cfg.dim, intermediate_size=cfg.hidden_dim, num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads, num_key_value_heads=cfg.n_kv_heads, head_dim=cfg.dh,
        hidden_act="silu", max_position_embeddings=cfg.max_len, rms_norm_eps=cfg.norm_eps,
        tie_word_embeddings=cfg.tie_embeddings, torch_dtype="float32", dtype="float32",
        # Both layouts: transformers >= 5 reads rope_parameters, 4.x rope_theta + rope_scaling.
        rope_parameters=rope, rope_theta=cfg.rope_theta,
        rope_scaling=None if cfg.rope_type == "default" else {k: v for k, v in rope.items() if k != "rope_theta"},
    )
    if model_type == "llama":
        hf.update(attention_bias=bool(cfg.qkv_bias), mlp_bias=bool(cfg.mlp_bias))
    if model_type == "mistral":
        hf["sliding_window"] = cfg.sliding_window
    if model_type == "qwen2":
        hf.update(use_sliding_window=False, sliding_window=None)
    if model_type == "mixtral":
        hf.update(mixtral.hf_config(cfg))
    if (cfg.qkv_bias != cfg.o_bias and model_type != "qwen2") or (cfg.mlp_bias and model_type != "llama"):
        raise ConfigError("this bias combination has no HF architecture")
    return hf


def to_hf(model, params: Mapping, folder: str, dtype=np.float32, tokenizer_from: str = "") -> None:
    """Writes an HF folder (config.json + safetensors) that transformers loads.

    LoRA adapters are merged and NF4 kernels de-quantised first. dtype: np.float32 or
    ml_dtypes.bfloat16. tokenizer_from: a folder whose tokenizer files are copied along.
    """
    cfg = model.cfg
    flat = _paths(base_params(model, params))
    tensors = {"model.embed_tokens.weight": flat["embed"]}
    for i in range(cfg.n_layers):
        for ours, theirs in PER_LAYER.items():
            for leaf, value in flat.items():
                if not leaf.startswith(f"layers/{ours}/"):
                    continue
                kind = leaf.rsplit("/", 1)[-1]
                tensor = value[i].T if kind == "kernel" else value[i]
                suffix = "bias" if kind == "bias" else "weight"
                tensors[f"model.layers.{i}.{theirs}.{suffix}"] = tensor
        if cfg.is_moe:
            tensors.update(mixtral.tensors(flat, i))
    tensors["model.norm.weight"] = flat["norm/scale"]
    if not cfg.tie_embeddings:
        tensors["lm_head.weight"] = flat["lm_head/kernel"].T
    tensors = {k: np.ascontiguousarray(np.asarray(v, np.float32).astype(dtype)) for k, v in tensors.items()}
    hf = hf_config_from(cfg)
    hf["torch_dtype"] = hf["dtype"] = "bfloat16" if np.dtype(dtype) != np.float32 else "float32"
    save_folder(tensors, folder, hf)
    if tokenizer_from:
        for name in TOKENIZER_FILES:
            src = os.path.join(tokenizer_from, name)
            if os.path.isfile(src):
                shutil.copy(src, os.path.join(folder, name))


def merge_workdir(workdir: str, out: str, dtype=np.float32) -> dict:
    """Merges the LoRA adapters of a run's newest checkpoint into its base and writes an HF
    folder (tokenizer files copied from init_from or data.vocab_path when present).
    Returns {"config": the run config, "num_params": parameters written}."""
    from jaxmodels.models import build_model
    from jaxmodels.train.checkpoint import load_params

    cfg, params = load_params(workdir, use_ema=True)
    model = build_model(cfg.model)
    if not hasattr(model, "cfg") or type(model).__module__ != "jaxmodels.models.llama":
        raise ConfigError(f"{workdir} trained a {cfg.model.name!r} model; merge_lora handles LLaMA-family runs")
    tokenizer_from = ""
    for candidate in (cfg.get("init_from", ""), cfg.data.get("vocab_path", "")):
        if candidate and os.path.isfile(os.path.join(candidate, "tokenizer.json")):
            tokenizer_from = candidate
            break
    to_hf(model, params, out, dtype=dtype, tokenizer_from=tokenizer_from)
    written = SafetensorsFolder(out)
    n = sum(int(np.prod(written.get(name, dtype=None).shape)) for name in written.keys())
    return {"config": cfg, "num_params": n}
