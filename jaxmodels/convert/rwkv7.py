"""Hugging Face `rwkv7` folders (the flash-linear-attention layout of the published RWKV-7
checkpoints, e.g. fla-hub/rwkv7-*: config.json with model_type "rwkv7" + safetensors)
-> our RWKV7.

Name map (per layer i, stacked on a leading [n_layer] axis; Linear weights [out, in] are
transposed to kernels [in, out]):
  model.embeddings.weight                      -> emb
  model.layers.0.pre_norm.{weight,bias}        -> ln0/{scale,bias}
  model.layers.i.attn_norm / ffn_norm          -> blocks/ln1 / ln2
  model.layers.i.attn.x_{r,w,k,v,a,g} [1,1,C]  -> blocks/att/x_{r,w,k,v,a,g} [C]
  model.layers.i.attn.{k_k, k_a, r_k}          -> blocks/att/{k_k, k_a, r_k}
  model.layers.i.attn.{r,k,v,o}_proj.weight    -> blocks/att/{receptance,key,value,output}/kernel
  model.layers.i.attn.w_lora.lora.{0,2}.weight, lora.2.bias -> blocks/att/w1, w2, w0
                           (a_lora -> a1, a2, a0; v_lora -> v1, v2, v0; g_lora -> g1, g2)
  model.layers.i.attn.g_norm.{weight,bias}     -> blocks/att/ln_x/{scale,bias}
  model.layers.i.ffn.x_k, ffn.{key,value}.weight -> blocks/ffn/x_k, ffn/{key,value}/kernel
  model.norm.{weight,bias}                     -> ln_out/{scale,bias}
  lm_head.weight                               -> head
The decay there is w = exp(-e^-0.5 · sigmoid(w_lora(x))), ours exp(-exp(-softplus(-w_raw) -
0.5)): the same function (exp(-softplus(-z)) = sigmoid(z)), so w0 is w_lora's bias as is.
Layer 0 has no v_lora (no value residual); our scanned layer 0 holds unused v0/v1/v2, set to 0.
"""
from __future__ import annotations

import numpy as np

from jaxmodels.config import ConfigError
from jaxmodels.convert.safetensors_io import SafetensorsFolder
from jaxmodels.models import rwkv7


def config_from_hf(hf: dict, st: SafetensorsFolder) -> rwkv7.Config:
    """Our Config from the HF config plus the tensor shapes (LoRA ranks, FFN width)."""
    if hf.get("attn"):
        raise ConfigError("this rwkv7 checkpoint mixes in attention layers (config 'attn'); only pure RWKV-7 "
                          "models are supported")
    if not hf.get("norm_first", True):
        raise ConfigError("rwkv7 norm_first=false (no pre_norm at layer 0) is not supported")
    if hf.get("hidden_act", "sqrelu") != "sqrelu":
        raise ConfigError(f"rwkv7 hidden_act {hf['hidden_act']!r} is not supported (only sqrelu)")
    C = int(hf["hidden_size"])
    head = hf.get("head_dim") or C // int(hf["num_heads"])
    value_dim = hf.get("value_dim")
    if value_dim not in (None, C) and any(v != C for v in np.atleast_1d(value_dim)):
        raise ConfigError(f"rwkv7 value_dim={value_dim} differs from hidden_size={C}: not supported")
    rank = lambda name: int(st.get(f"model.layers.0.attn.{name}.lora.0.weight", None).shape[0])  # noqa: E731
    L = int(hf["num_hidden_layers"])
    v_rank = int(st.get("model.layers.1.attn.v_lora.lora.0.weight", None).shape[0]) if L > 1 else 32
    norm_eps = float(hf.get("norm_eps", 1e-5))
    return rwkv7.Config(
        vocab_size=int(st.get("model.embeddings.weight", None).shape[0]), d_model=C, n_layer=L,
        head_size=int(head), d_ffn=int(st.get("model.layers.0.ffn.key.weight", None).shape[0]),
        d_decay_lora=rank("w_lora"), d_aaa_lora=rank("a_lora"), d_mv_lora=v_rank, d_gate_lora=rank("g_lora"),
        norm_eps=norm_eps, group_norm_eps=head * norm_eps)  # fla: GroupNorm eps = head_dim * norm_eps


def from_hf(folder: str, hf_config: dict):
    """Reads an HF rwkv7 folder; returns (RWKV7 module, f32 params)."""
    st = SafetensorsFolder(folder)
    cfg = config_from_hf(hf_config, st)
    L, C = cfg.n_layer, cfg.d_model
    if hf_config.get("tie_word_embeddings", False) and "lm_head.weight" not in st:
        head = st.get("model.embeddings.weight")
    else:
        head = st.get("lm_head.weight")

    def layer(i: int, name: str) -> np.ndarray:
        return st.get(f"model.layers.{i}.{name}")

    def stack(name: str, fn=lambda x: x) -> np.ndarray:
        return np.stack([fn(layer(i, name)) for i in range(L)])

    def kernel(name: str) -> dict:
        return {"kernel": stack(name + ".weight", np.transpose)}

    def ln(name: str) -> dict:
        return {"scale": stack(name + ".weight"), "bias": stack(name + ".bias")}

    att = {f"x_{n}": stack(f"attn.x_{n}", lambda x: x.reshape(-1)) for n in "rwkvag"}
    att.update(k_k=stack("attn.k_k"), k_a=stack("attn.k_a"), r_k=stack("attn.r_k"),
               receptance=kernel("attn.r_proj"), key=kernel("attn.k_proj"), value=kernel("attn.v_proj"),
               output=kernel("attn.o_proj"),
               ln_x={"scale": stack("attn.g_norm.weight"), "bias": stack("attn.g_norm.bias")})
    for ours, theirs in (("w", "w_lora"), ("a", "a_lora"), ("g", "g_lora")):
        att[f"{ours}1"] = stack(f"attn.{theirs}.lora.0.weight", np.transpose)
        att[f"{ours}2"] = stack(f"attn.{theirs}.lora.2.weight", np.transpose)
        if ours != "g":  # the gate LoRA has no bias
            att[f"{ours}0"] = stack(f"attn.{theirs}.lora.2.bias")
    # v_lora exists from layer 1 on; layer 0's slot stays zero (unused by the model).
    r = cfg.lora("mv")
    v1, v2, v0 = np.zeros((L, C, r), np.float32), np.zeros((L, r, C), np.float32), np.zeros((L, C), np.float32)
    for i in range(1, L):
        v1[i] = layer(i, "attn.v_lora.lora.0.weight").T
        v2[i] = layer(i, "attn.v_lora.lora.2.weight").T
        v0[i] = layer(i, "attn.v_lora.lora.2.bias")
    att.update(v0=v0, v1=v1, v2=v2)
    params = {
        "emb": st.get("model.embeddings.weight"),
        "ln0": {"scale": layer(0, "pre_norm.weight"), "bias": layer(0, "pre_norm.bias")},
        "blocks": {
            "ln1": ln("attn_norm"), "ln2": ln("ffn_norm"), "att": att,
            "ffn": {"x_k": stack("ffn.x_k", lambda x: x.reshape(-1)), "key": kernel("ffn.key"),
                    "value": kernel("ffn.value")},
        },
        "ln_out": {"scale": st.get("model.norm.weight"), "bias": st.get("model.norm.bias")},
        "head": head,
    }
    return rwkv7.RWKV7(cfg), params
