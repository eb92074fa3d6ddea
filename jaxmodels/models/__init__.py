"""Model registry: `model.name` in a config picks a family module, which builds the module.

Each family module (one file in this folder) provides:
  Config        a dataclass holding every hyper-parameter of the family;
  SIZES         {"size-name": {field: value, ...}} — the named sizes of the papers/repos;
  build(cfg)    -> flax.linen.Module, where cfg is the config's `model` section as a dict
                   (without "name"); an optional "size" key starts from SIZES[size] and
                   the other keys override it. Unknown keys raise ConfigError listing
                   the valid ones (use `jaxmodels.config.dataclass_from_dict`).

Causal LMs (gpt, llama, mamba, rwkv4, rwkv7, retnet, ...) follow one calling contract:
  model.apply({"params": p}, tokens_BT)                   -> logits_BTV (f32)
  model.apply({"params": p}, tokens_BT, train=True, rngs={"dropout": r})   (training)
  model.init_decode_state(batch, max_len, dtype)          -> pytree (KV cache or recurrent
                                                             state; a @nn.nowrap method,
                                                             callable on the unbound module)
  model.apply({"params": p}, tokens_BS, decode_state=s, pos=pos) -> (logits_BSV, new_s)
      tokens_BS are the S tokens at absolute positions pos .. pos+S-1 (S = prompt length
      for prefill, 1 per decode step); pos is a scalar int32 array.
  model.apply({"params": p}, tokens_BT, head_input=True)      -> layers.lm_head.HeadInput (final
      hidden states + head weight) instead of logits, for the chunked loss (optional: the
      LM task falls back to logits for a family without it)
  model.max_context                                       -> int, only on models that read a
      bounded context (learned positions: GPT's block_size; LLaMA's max_len); generation
      past it slides the window (jaxmodels/generate.py). Recurrent models have none.
Diffusion backbones: model.apply({"params": p}, x_t, t, cond, train=False) -> prediction.
"""
from __future__ import annotations

import importlib
from typing import Any, Mapping

from jaxmodels.config import ConfigError

FAMILIES = {
    "gpt": "jaxmodels.models.gpt",
    "llama": "jaxmodels.models.llama",
    "bitnet": "jaxmodels.models.bitnet",
    "mamba": "jaxmodels.models.mamba",
    "rwkv4": "jaxmodels.models.rwkv4",
    "rwkv7": "jaxmodels.models.rwkv7",
    "retnet": "jaxmodels.models.retnet",
    "dit": "jaxmodels.models.dit",
    "unet": "jaxmodels.models.unet",
    "vae": "jaxmodels.models.vae",   # SD's AutoencoderKL (tasks/autoencoder.py trains it)
}


def family(name: str):
    """Imports and returns the family module registered as `name`."""
    if name not in FAMILIES:
        raise ConfigError(f"unknown model.name {name!r}; valid: {', '.join(sorted(FAMILIES))}")
    return importlib.import_module(FAMILIES[name])


def build_model(model_cfg: Mapping[str, Any]):
    """Builds the flax module described by a config's `model` section."""
    cfg = dict(model_cfg.to_dict() if hasattr(model_cfg, "to_dict") else model_cfg)
    name = cfg.pop("name", None)
    if name is None:
        raise ConfigError(f"config.model needs a 'name'; valid: {', '.join(sorted(FAMILIES))}")
    return family(name).build(cfg)


def sized_config(config_cls, sizes: Mapping[str, Mapping[str, Any]], cfg: Mapping[str, Any], what: str):
    """Config dataclass from an optional named size plus field overrides (shared by families)."""
    from jaxmodels.config import dataclass_from_dict

    cfg = dict(cfg)
    size = cfg.pop("size", None)
    values: dict = {}
    if size is not None:
        if size not in sizes:
            raise ConfigError(f"unknown {what} size {size!r}; valid: {', '.join(sizes)}")
        values.update(sizes[size])
    values.update(cfg)
    if "adapters" in values:  # model.adapters: a config section -> a frozen, hashable spec
        from jaxmodels.layers.adapters import spec_from

        values["adapters"] = spec_from(values["adapters"])
    return dataclass_from_dict(config_cls, values, what=f"{what} model")


def resize_section(section, old_size, new_size) -> None:
    """`--config.model.size=NEW` on a section that lists every field (tasks.lm.model_section):
    fields still at OLD's table value move to NEW's; fields the config set itself stay."""
    import dataclasses

    if "name" not in section or section["name"] not in FAMILIES:
        return
    fam = family(section["name"])
    if new_size not in fam.SIZES:
        raise ConfigError(f"unknown {section['name']} size {new_size!r}; valid: {', '.join(fam.SIZES)}")
    defaults = {f.name: f.default for f in dataclasses.fields(fam.Config)}
    old = {**defaults, **fam.SIZES.get(old_size, {})} if old_size else None
    new = {**defaults, **fam.SIZES[new_size]}
    for key in list(section.keys()):
        if key in ("name", "size") or key not in new:
            continue
        if old is None or section[key] == old.get(key):
            with section.ignore_type():
                section[key] = new[key]
