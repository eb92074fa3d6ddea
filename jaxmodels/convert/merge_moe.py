""""Frankenstein" MoE from dense checkpoints (mergekit-moe style), LLaMA family -> Mixtral.

A base model supplies embeddings, attention, norms and head; each listed source checkpoint
(same architecture) supplies one expert's FFN (its gate/up/down projections, every layer);
the routers are initialised from prompts. The result is written as a Mixtral folder
(config.json + safetensors, the tokenizer copied from the base) that `transformers` loads
and that `--config.init_from` trains from.

merge.yaml:
    base_model: path/to/base            # HF folder or launch.convert output (llama family)
    gate_mode: hidden                   # random | cheap_embed | hidden
    experts_per_token: 2
    tokenizer: path/with/tokenizer.json # optional; default: base_model
    experts:
      - source_model: path/to/code_model
        positive_prompts: ["def f(x):", ...]
        negative_prompts: ["Once upon a time"]   # optional
      - source_model: ...

Gate modes (router column e = the vector v_e below, scaled to unit norm):
  random       N(0, init_std), as a freshly initialised MoE.
  cheap_embed  v_e = mean token embedding of expert e's positive prompts (minus that of its
               negative prompts), the same at every layer: cheap, needs no forward pass.
  hidden       v_e at layer i = mean router input (the base model's normalised residual
               stream entering layer i's FFN, over all tokens of the prompts) of the
               positive prompts minus that of the negative prompts, computed by running the
               base model. A router column points where that expert's prompts sit in the
               space the router actually sees, so those prompts route to it.
"""
from __future__ import annotations

import dataclasses
import os
import shutil
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from jaxmodels.config import ConfigError

GATE_MODES = ("random", "cheap_embed", "hidden")


def read_merge_config(path: str) -> dict:
    import yaml

    with open(path) as f:
        spec = yaml.safe_load(f)
    base = os.path.dirname(os.path.abspath(path))

    def resolve(p):  # paths relative to the yaml file
        return p if os.path.isabs(p) or os.path.exists(p) else os.path.join(base, p)

    if not isinstance(spec, dict) or "base_model" not in spec or not spec.get("experts"):
        raise ConfigError(f"{path}: needs base_model and a list of experts (each with source_model)")
    mode = spec.get("gate_mode", "hidden")
    if mode not in GATE_MODES:
        raise ConfigError(f"{path}: gate_mode {mode!r}; valid: {', '.join(GATE_MODES)}")
    experts = []
    for i, e in enumerate(spec["experts"]):
        if "source_model" not in e:
            raise ConfigError(f"{path}: experts[{i}] has no source_model")
        if mode != "random" and not e.get("positive_prompts"):
            raise ConfigError(f"{path}: experts[{i}] needs positive_prompts for gate_mode={mode}")
        experts.append(dict(source_model=resolve(e["source_model"]),
                            positive_prompts=list(e.get("positive_prompts") or []),
                            negative_prompts=list(e.get("negative_prompts") or [])))
    top_k = int(spec.get("experts_per_token", 2))
    if not 1 <= top_k <= len(experts):
        raise ConfigError(f"{path}: experts_per_token={top_k} must be in 1..{len(experts)}")
    return dict(base_model=resolve(spec["base_model"]), gate_mode=mode, top_k=top_k, experts=experts,
                tokenizer=resolve(spec.get("tokenizer") or spec["base_model"]), seed=int(spec.get("seed", 0)))


def _load_llama(path: str):
    from jaxmodels.convert.pretrained import load_pretrained
    from jaxmodels.models import build_model

    model_cfg, params = load_pretrained(path)
    if model_cfg.get("name") != "llama" or model_cfg.get("moe_experts", 0):
        raise ConfigError(f"{path}: merge_moe takes dense LLaMA-family checkpoints (Llama/Mistral/Qwen2 "
                          f"layout), got {model_cfg.get('name')!r}")
    return build_model(model_cfg), jax.tree.map(lambda a: np.asarray(a, np.float32), params)


def _tokenize(tokenizer, prompts) -> list[np.ndarray]:
    return [np.asarray(tokenizer.encode(p).ids, np.int32) for p in prompts]


def router_inputs(model, params, tokens: np.ndarray) -> np.ndarray:
    """[n_layers, T, D]: what each layer's FFN (router) sees for one prompt, base model."""
    from jaxmodels.models.llama import Block

    cfg = model.cfg
    x = jnp.take(jnp.asarray(params["embed"]), jnp.asarray(tokens)[None], axis=0).astype(cfg.compute_dtype)
    block = Block(cfg)
    out = []
    for i in range(cfg.n_layers):
        layer = jax.tree.map(lambda a: a[i], params["layers"])
        x_next, state = block.apply({"params": layer}, x, capture_intermediates=lambda m, _: m.name == "mlp_norm",
                                    mutable=["intermediates"])
        out.append(np.asarray(state["intermediates"]["mlp_norm"]["__call__"][0][0], np.float32))
        x = x_next[0] if isinstance(x_next, tuple) else x_next
    return np.stack(out)


def gate_vectors(mode: str, model, params, tokenizer, experts: list[dict], seed: int) -> np.ndarray:
    """Router kernels [n_layers, D, E] for the gate mode."""
    cfg = model.cfg
    L, D, E = cfg.n_layers, cfg.dim, len(experts)
    if mode == "random":
        return (cfg.init_std * np.random.default_rng(seed).standard_normal((L, D, E))).astype(np.float32)

    def mean_of(prompts):  # [L, D]
        if not prompts:
            return np.zeros((L, D), np.float32)
        if mode == "cheap_embed":
            rows = np.concatenate([params["embed"][t] for t in _tokenize(tokenizer, prompts)])
            return np.broadcast_to(rows.mean(axis=0), (L, D))
        hidden = np.concatenate([router_inputs(model, params, t) for t in _tokenize(tokenizer, prompts)], axis=1)
        return hidden.mean(axis=1)

    columns = []
    for e in experts:
        v = mean_of(e["positive_prompts"]) - mean_of(e["negative_prompts"])
        columns.append(v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-12))
    return np.stack(columns, axis=-1).astype(np.float32)


def merge(spec: Mapping[str, Any]) -> tuple[Any, dict]:
    """(Mixtral-layout llama module, params) from a read_merge_config spec."""
    from jaxmodels.convert.llama import load_tokenizer
    from jaxmodels.models.llama import Llama

    base_model, base = _load_llama(spec["base_model"])
    cfg = base_model.cfg
    if cfg.mlp_bias or cfg.qkv_bias or cfg.o_bias:
        raise ConfigError("the Mixtral layout has no biases: the base model must have none")
    ffns = {name: [] for name in ("gate_proj", "up_proj", "down_proj")}
    for e in spec["experts"]:
        src_model, src = _load_llama(e["source_model"])
        if (src_model.cfg.dim, src_model.cfg.hidden_dim, src_model.cfg.n_layers) != (cfg.dim, cfg.hidden_dim, cfg.n_layers):
            raise ConfigError(f"{e['source_model']}: architecture differs from the base model "
                              "(dim, hidden_dim and n_layers must match)")
        for name in ffns:
            ffns[name].append(src["layers"]["mlp"][name]["kernel"])   # [L, a, b]
    tokenizer = None if spec["gate_mode"] == "random" else load_tokenizer(spec["tokenizer"])
    router = gate_vectors(spec["gate_mode"], base_model, base, tokenizer, spec["experts"], spec["seed"])
    layers = {k: v for k, v in base["layers"].items() if k != "mlp"}
    layers["moe"] = {"router": router, **{n: np.stack(v, axis=1) for n, v in ffns.items()}}
    moe_cfg = dataclasses.replace(cfg, moe_experts=len(spec["experts"]), moe_top_k=spec["top_k"], moe_every=1,
                                  moe_hidden=0, moe_router="mixtral", moe_dispatch="dropless")
    return Llama(moe_cfg), {**base, "layers": layers}


def merge_to_folder(config_path: str, out: str) -> dict:
    """Reads merge.yaml, merges, writes the Mixtral folder (+ the tokenizer); returns the spec."""
    from jaxmodels.convert.llama import TOKENIZER_FILES, to_hf

    spec = read_merge_config(config_path)
    model, params = merge(spec)
    to_hf(model, params, out)
    for name in TOKENIZER_FILES:
        src = os.path.join(spec["tokenizer"], name)
        if os.path.isfile(src) and name != "generation_config.json":
            shutil.copy(src, os.path.join(out, name))
    return spec
