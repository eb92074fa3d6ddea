"""Sparse upcycling (Komatsuzaki et al. 2022): a dense GPT / LLaMA checkpoint becomes an MoE
whose experts all start as copies of the dense FFN.

Why the upcycled model computes exactly what the dense one did at step 0: the router keeps
its usual small random init (so tokens are spread over experts from the first step and
the copies can drift apart), and with the Mixtral router the k kept weights are
renormalised to sum to 1; a weighted sum of k identical expert outputs with weights
summing to 1 is the dense FFN output, whichever experts were picked (to float rounding:
tested at 1e-6 on the logits). A Switch router (no renormalisation) would scale the FFN by
the router probability, so upcycling refuses it. Dispatch is dropless: capacity dispatch
could drop tokens and change the function.

MoE every n layers: layers n-1, 2n-1, ... get experts; the stack is regrouped into
[n_layers / n] groups of n (params <stack>/layer{j}/..., see jaxmodels.layers.moe.moe_stack).
"""
from __future__ import annotations

import os
from typing import Any, Mapping

import jax
import numpy as np

from jaxmodels.config import ConfigError

# family -> (stack name, dense FFN name, embedding leaf, layer-count field, {ffn leaf path: moe leaf})
LAYOUTS = {
    "gpt": ("h", "mlp", "wte", "n_layer",
            {"fc/kernel": "fc", "fc/bias": "fc_bias", "proj/kernel": "proj", "proj/bias": "proj_bias"}),
    "llama": ("layers", "mlp", "embed", "n_layers",
              {"gate_proj/kernel": "gate_proj", "up_proj/kernel": "up_proj", "down_proj/kernel": "down_proj"}),
}


def load_dense(path: str) -> tuple[dict, dict]:
    """(model section dict with "name", f32 numpy params) from a run directory (its newest
    checkpoint), a `launch.convert` output or a Hugging Face folder."""
    from jaxmodels.convert.pretrained import load_pretrained
    from jaxmodels.train.checkpoint import checkpoint_dir

    if os.path.isdir(checkpoint_dir(path)):
        from jaxmodels.train.checkpoint import load_params

        cfg, params = load_params(path)
        model_cfg = cfg.model.to_dict()
        model_cfg.pop("size", None)
    else:
        model_cfg, params = load_pretrained(path)
    return dict(model_cfg), jax.tree.map(lambda a: np.asarray(a, np.float32), jax.device_get(params))


def upcycle(model_cfg: Mapping[str, Any], params: Mapping[str, Any], experts: int, top_k: int,
            every: int = 1, seed: int = 0) -> tuple[dict, dict]:
    """(MoE model section, MoE params) from a dense model section and its params."""
    name = model_cfg.get("name")
    if name not in LAYOUTS:
        raise ConfigError(f"upcycling supports {', '.join(LAYOUTS)} checkpoints, not {name!r}")
    stack, ffn, embed, n_field, leaves = LAYOUTS[name]
    if model_cfg.get("moe_experts", 0):
        raise ConfigError("the checkpoint is already an MoE (moe_experts > 0)")
    if model_cfg.get("lora_rank", 0) or model_cfg.get("quant", "none") != "none":
        raise ConfigError("upcycle a plain checkpoint: merge LoRA adapters first (launch.merge_lora)")
    n_layers = int(model_cfg[n_field])
    if experts < 2 or not 1 <= top_k <= experts or every < 1 or n_layers % every:
        raise ConfigError(f"need experts >= 2, 1 <= top_k <= experts, and every dividing {n_layers} layers")
    dense = params[stack][ffn]
    dim = params[embed].shape[1]
    init_std = float(model_cfg.get("init_std", 0.02))
    rng = np.random.default_rng(seed)

    def moe_leaves(layer_ids):
        out = {}
        for path, moe_name in leaves.items():
            node = dense
            for key in path.split("/"):
                if key not in node:
                    break
                node = node[key]
            else:
                value = np.asarray(node)[layer_ids]                      # [L', ...]
                out[moe_name] = np.repeat(value[:, None], experts, axis=1)  # [L', E, ...]
        out["router"] = (init_std * rng.standard_normal((len(layer_ids), dim, experts))).astype(np.float32)
        return out

    new_stack = {}
    if every == 1:
        new_stack = {k: v for k, v in params[stack].items() if k != ffn}
        new_stack["moe"] = moe_leaves(np.arange(n_layers))
    else:
        for j in range(every):
            ids = np.arange(j, n_layers, every)
            group = jax.tree.map(lambda a: np.asarray(a)[ids], {k: v for k, v in params[stack].items()
                                                                if k != ffn or j < every - 1})
            if j == every - 1:
                group["moe"] = moe_leaves(ids)
            new_stack[f"layer{j}"] = group
    new_params = {**{k: v for k, v in params.items() if k != stack}, stack: new_stack}
    new_cfg = dict(model_cfg, moe_experts=experts, moe_top_k=top_k, moe_every=every, moe_hidden=0,
                   moe_router="mixtral", moe_dispatch="dropless")
    if int(new_cfg.get("vocab_size", 1)) <= 0:
        new_cfg["vocab_size"] = int(params[embed].shape[0])
    return new_cfg, new_params


def upcycle_folder(src: str, out: str, experts: int, top_k: int, every: int = 1, seed: int = 0) -> dict:
    """Reads `src`, upcycles, writes a `--config.init_from` folder; returns the model section."""
    from jaxmodels.convert.pretrained import save_pretrained

    model_cfg, params = load_dense(src)
    new_cfg, new_params = upcycle(model_cfg, params, experts, top_k, every, seed)
    save_pretrained(new_cfg, new_params, out)
    return new_cfg
