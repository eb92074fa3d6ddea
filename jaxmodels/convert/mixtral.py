"""Mixtral (HF `MixtralForCausalLM`) <-> jaxmodels.models.llama with moe_experts > 0.

Mixtral is a Mistral whose every MLP is `block_sparse_moe`: a bias-free router `gate`
[E, D] and E SwiGLU experts (w1 = gate_proj, w3 = up_proj, w2 = down_proj), softmax over
all experts in f32, top-k, the k weights renormalised (our moe_router="mixtral").
Only the MoE parts live here; jaxmodels.convert.llama reads and writes everything else and
calls these hooks, so the two share one loader.

Param layout (HF name under model.layers.i.block_sparse_moe -> ours under layers/moe):
  gate.weight             [E, D]  router     [L, D, E]
  experts.j.w1.weight     [F, D]  gate_proj  [L, E, D, F]
  experts.j.w3.weight     [F, D]  up_proj    [L, E, D, F]
  experts.j.w2.weight     [D, F]  down_proj  [L, E, F, D]
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np

from jaxmodels.config import ConfigError

EXPERT_NAMES = {"gate_proj": "w1", "up_proj": "w3", "down_proj": "w2"}
PREFIX = "block_sparse_moe"


def config_fields(hf: Mapping[str, Any]) -> dict:
    """The MoE fields of our llama Config for a Mixtral config.json."""
    return dict(moe_experts=int(hf["num_local_experts"]), moe_top_k=int(hf["num_experts_per_tok"]),
                moe_every=1, moe_router="mixtral", moe_hidden=0)


def training_fields(hf: Mapping[str, Any]) -> dict:
    """Router-loss weights matching HF's training loss: HF's load-balancing loss sums over
    the k choices (k times ours); Mixtral has no z-loss."""
    return dict(moe_aux_weight=float(hf.get("router_aux_loss_coef", 0.0)) * int(hf["num_experts_per_tok"]),
                moe_z_weight=0.0)


def read(get: Callable[[str], np.ndarray], leaf: str, layer: int, num_experts: int) -> np.ndarray:
    """Our layers/moe/<leaf> for one layer, from an HF tensor getter."""
    base = f"model.layers.{layer}.{PREFIX}"
    if leaf == "router":
        return np.ascontiguousarray(get(f"{base}.gate.weight").T)
    if leaf not in EXPERT_NAMES:
        raise KeyError(f"moe/{leaf}")
    w = EXPERT_NAMES[leaf]
    return np.stack([get(f"{base}.experts.{j}.{w}.weight").T for j in range(num_experts)])


def tensors(flat: Mapping[str, np.ndarray], layer: int) -> dict:
    """HF tensors of one layer's MoE from our flat params ("layers/moe/...")."""
    base = f"model.layers.{layer}.{PREFIX}"
    out = {f"{base}.gate.weight": flat["layers/moe/router"][layer].T}
    for ours, w in EXPERT_NAMES.items():
        stacked = flat[f"layers/moe/{ours}"][layer]
        for j in range(stacked.shape[0]):
            out[f"{base}.experts.{j}.{w}.weight"] = stacked[j].T
    return out


def hf_config(cfg) -> dict:
    """The Mixtral-specific config.json entries for our Config (refuses what Mixtral cannot say)."""
    if cfg.moe_every != 1 or cfg.moe_router != "mixtral" or cfg.moe_hidden not in (0, cfg.hidden_dim):
        raise ConfigError("a Mixtral export needs moe_every=1, moe_router='mixtral' and "
                          "moe_hidden=0 (experts as wide as hidden_dim)")
    if cfg.qkv_bias or cfg.o_bias or cfg.mlp_bias:
        raise ConfigError("Mixtral has no biases: qkv_bias, o_bias and mlp_bias must be False")
    return dict(num_local_experts=cfg.moe_experts, num_experts_per_tok=cfg.moe_top_k,
                router_aux_loss_coef=cfg.moe_aux_weight / cfg.moe_top_k, output_router_logits=False,
                router_jitter_noise=0.0, sliding_window=cfg.sliding_window or None)
