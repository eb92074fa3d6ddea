"""Hugging Face `RwkvForCausalLM` folders (RWKV-4, e.g. RWKV/rwkv-4-169m-pile) -> our RWKV4.

Name map (per block i, stacked on a leading [n_layer] axis; Linear weights transposed):
  rwkv.embeddings.weight                 -> emb
  rwkv.blocks.0.pre_ln.{weight,bias}     -> ln0/{scale,bias}
  rwkv.blocks.i.ln{1,2}.{weight,bias}    -> blocks/ln{1,2}/{scale,bias}
  rwkv.blocks.i.attention.time_{decay,first}         -> blocks/att/time_{decay,first}
  rwkv.blocks.i.attention.time_mix_{key,value,receptance} [1,1,D] -> blocks/att/time_mix_{k,v,r}
  rwkv.blocks.i.attention.{key,value,receptance,output}.weight    -> blocks/att/<same>/kernel
  rwkv.blocks.i.feed_forward.time_mix_{key,receptance}            -> blocks/ffn/time_mix_{k,r}
  rwkv.blocks.i.feed_forward.{key,receptance,value}.weight        -> blocks/ffn/<same>/kernel
  rwkv.ln_out.{weight,bias}              -> ln_out/{scale,bias}
  head.weight                            -> head
HF's rescale_every only changes fp16 inference numerics; the converted weights are the
stored (unrescaled) ones, which is what RwkvForCausalLM computes with in f32.
"""
from __future__ import annotations

import numpy as np

from jaxmodels.convert.safetensors_io import SafetensorsFolder
from jaxmodels.models import rwkv4


def config_from_hf(hf: dict) -> rwkv4.Config:
    d_model = hf["hidden_size"]
    return rwkv4.Config(vocab_size=hf["vocab_size"], d_model=d_model, n_layer=hf["num_hidden_layers"],
                        d_att=hf.get("attention_hidden_size") or d_model,
                        d_ffn=hf.get("intermediate_size") or 4 * d_model,
                        norm_eps=hf.get("layer_norm_epsilon", 1e-5))


def from_hf(folder: str, hf_config: dict):
    """Reads an HF RWKV-4 folder; returns (RWKV4 module, f32 params)."""
    st = SafetensorsFolder(folder)
    cfg = config_from_hf(hf_config)

    def stack(name: str, fn=lambda x: x) -> np.ndarray:
        return np.stack([fn(st.get(f"rwkv.blocks.{i}.{name}")) for i in range(cfg.n_layer)])

    def kernel(name: str) -> dict:
        return {"kernel": stack(name + ".weight", np.transpose)}

    def mix(name: str) -> np.ndarray:
        return stack(name, lambda x: x.reshape(-1))

    def ln(name: str) -> dict:
        return {"scale": stack(name + ".weight"), "bias": stack(name + ".bias")}

    att, ffn = "attention.", "feed_forward."
    params = {
        "emb": st.get("rwkv.embeddings.weight"),
        "ln0": {"scale": st.get("rwkv.blocks.0.pre_ln.weight"), "bias": st.get("rwkv.blocks.0.pre_ln.bias")},
        "blocks": {
            "ln1": ln("ln1"),
            "ln2": ln("ln2"),
            "att": {
                "time_decay": stack(att + "time_decay"),
                "time_first": stack(att + "time_first"),
                "time_mix_k": mix(att + "time_mix_key"),
                "time_mix_v": mix(att + "time_mix_value"),
                "time_mix_r": mix(att + "time_mix_receptance"),
                **{n: kernel(att + n) for n in ("key", "value", "receptance", "output")},
            },
            "ffn": {
                "time_mix_k": mix(ffn + "time_mix_key"),
                "time_mix_r": mix(ffn + "time_mix_receptance"),
                **{n: kernel(ffn + n) for n in ("key", "receptance", "value")},
            },
        },
        "ln_out": {"scale": st.get("rwkv.ln_out.weight"), "bias": st.get("rwkv.ln_out.bias")},
        "head": st.get("head.weight"),
    }
    return rwkv4.RWKV4(cfg), params
