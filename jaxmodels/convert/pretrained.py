"""Pretrained-weight folders that `--config.init_from=DIR` starts from.

Two kinds of folder are accepted by `load_pretrained`:
  * ours, written by `save_pretrained` (e.g. by `python -m launch.convert`):
      jaxmodels_model.json  {"format": "jaxmodels-params", "version": 1, "model": {...}}
      params.safetensors    one tensor per leaf, named by its path ("h/attn/c_attn/kernel")
  * a raw Hugging Face folder (config.json + *.safetensors), converted on the fly through
    `jaxmodels.convert.from_hf`.
Both give `(model_cfg_dict, params)`; model_cfg_dict is a config `model` section (with
"name") that `jaxmodels.models.build_model` turns back into the same module.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from jaxmodels.config import ConfigError

MARKER = "jaxmodels_model.json"
PARAMS_FILE = "params.safetensors"
FORMAT = "jaxmodels-params"
SEP = "/"


def flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": x}} -> {"a/b": x}."""
    flat = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, name + SEP))
        else:
            flat[name] = value
    return flat


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    """{"a/b": x} -> {"a": {"b": x}}."""
    tree: dict[str, Any] = {}
    for name, value in flat.items():
        node = tree
        *parents, leaf = name.split(SEP)
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return tree


def model_config_dict(model) -> dict[str, Any]:
    """The config `model` section (with "name") that rebuilds `model` via build_model."""
    from jaxmodels.models import FAMILIES, family

    names = [name for name, mod in FAMILIES.items() if mod == type(model).__module__]
    if not names:
        raise ConfigError(f"{type(model).__name__} ({type(model).__module__}) is not a registered family")
    config_cls = family(names[0]).Config
    for field in dataclasses.fields(model):
        value = getattr(model, field.name, None)
        if isinstance(value, config_cls):
            return {"name": names[0], **dataclasses.asdict(value)}
    raise ConfigError(f"{type(model).__name__} has no field holding a {config_cls.__name__}")


def _to_numpy(x) -> np.ndarray:
    array = np.asarray(jax.device_get(x))
    if array.dtype.kind == "V" or str(array.dtype) == "bfloat16":
        array = array.astype(np.float32)  # safetensors' numpy writer has no bfloat16
    return np.ascontiguousarray(array)


def save_pretrained(model_cfg: Mapping[str, Any], params: Mapping[str, Any], out_dir: str) -> None:
    """Writes `params` and the `model` config section (must include "name") to out_dir."""
    from safetensors.numpy import save_file

    model_cfg = dict(model_cfg.to_dict() if hasattr(model_cfg, "to_dict") else model_cfg)
    if "name" not in model_cfg:
        raise ConfigError("save_pretrained needs the model section with its 'name' (the family)")
    os.makedirs(out_dir, exist_ok=True)
    tensors = {name: _to_numpy(x) for name, x in flatten(params).items()}
    save_file(tensors, os.path.join(out_dir, PARAMS_FILE), metadata={"format": FORMAT})
    with open(os.path.join(out_dir, MARKER), "w") as f:
        json.dump({"format": FORMAT, "version": 1, "model": model_cfg}, f, indent=2)


def is_pretrained_dir(path: str) -> bool:
    return os.path.isfile(os.path.join(path, MARKER))


def load_pretrained(path: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(model_cfg_dict, f32 params) from a save_pretrained folder or a Hugging Face folder."""
    if is_pretrained_dir(path):
        from safetensors import safe_open

        with open(os.path.join(path, MARKER)) as f:
            meta = json.load(f)
        if meta.get("format") != FORMAT:
            raise ConfigError(f"{path}/{MARKER}: unknown format {meta.get('format')!r}")
        with safe_open(os.path.join(path, PARAMS_FILE), framework="numpy") as handle:
            flat = {name: jnp.asarray(handle.get_tensor(name)) for name in handle.keys()}
        return dict(meta["model"]), unflatten(flat)
    if os.path.isfile(os.path.join(path, "config.json")):
        from jaxmodels.convert import from_hf

        model, params = from_hf(path)
        return model_config_dict(model), params
    raise ConfigError(f"init_from={path!r}: neither a `python -m launch.convert` output "
                      f"({MARKER} + {PARAMS_FILE}) nor a Hugging Face folder (config.json + *.safetensors)")


def restore_into(fresh_params: Any, loaded_params: Any, path: str = "") -> Any:
    """Checks that loaded params have the fresh ones' tree and shapes; returns them cast.

    Raises ConfigError listing every missing, unexpected or mis-shaped entry (usually the
    config's model section does not match the checkpoint: print the one launch.convert gave).
    """
    fresh = flatten(fresh_params)
    loaded = flatten(loaded_params)
    problems = [f"missing {k}" for k in sorted(set(fresh) - set(loaded))]
    problems += [f"unexpected {k}" for k in sorted(set(loaded) - set(fresh))]
    problems += [f"{k}: checkpoint {tuple(loaded[k].shape)} vs model {tuple(fresh[k].shape)}"
                 for k in sorted(set(fresh) & set(loaded)) if tuple(loaded[k].shape) != tuple(fresh[k].shape)]
    if problems:
        shown = "; ".join(problems[:12]) + (f"; ... ({len(problems)} in all)" if len(problems) > 12 else "")
        raise ConfigError(f"init_from {path!r} does not fit the configured model: {shown}")
    return unflatten({k: jnp.asarray(loaded[k], dtype=fresh[k].dtype) for k in fresh})
