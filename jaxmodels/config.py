"""Loading experiment configs: `configs/x.py[:arg]` plus `--config.a.b=value` overrides.

Every error names what is valid, so a typo never silently trains the wrong model.
"""
from __future__ import annotations

import ast
import dataclasses
import importlib.util
import os
from typing import Any, Iterable, Mapping, Type, TypeVar

import ml_collections

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file, override or model field is wrong; the message says what is valid."""


def load_config(spec: str, overrides: Iterable[str] = ()) -> ml_collections.ConfigDict:
    """Loads `path/to/config.py[:arg]`, calls its get_config(arg) and applies overrides.

    overrides: strings "a.b=value" (the `--config.` prefix already stripped).
    """
    path, _, arg = spec.partition(":")
    if not os.path.isfile(path):
        raise ConfigError(f"config file {path!r} not found; pass --config configs/<name>.py[:variant] "
                          f"(available: {', '.join(list_configs())})")
    mod_name = "_jaxmodels_config_" + os.path.splitext(os.path.basename(path))[0]
    module_spec = importlib.util.spec_from_file_location(mod_name, path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ConfigError(f"{path} defines no get_config(arg=None)")
    cfg = module.get_config(arg or None)
    apply_overrides(cfg, overrides)
    validate_config(cfg)
    return cfg


# Model/data fields that count something (layers, heads, widths, lengths): must be >= 1.
# vocab_size is left out: <= 0 means "take it from the tokenizer".
POSITIVE_FIELDS = ("n_layer", "n_layers", "layers", "num_layers", "depth", "n_head", "n_heads", "num_heads",
                   "n_embd", "d_model", "width", "hidden_size", "dim", "seq_len", "block_size",
                   "image_size", "patch_size", "d_state", "head_size", "n_kv_head", "intermediate_size")


def _check_range(errors: list, key: str, value, low=None, high=None, low_open=False, high_open=False):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    if low is not None and (value <= low if low_open else value < low):
        errors.append(f"{key}={value!r} must be {'>' if low_open else '>='} {low}")
    if high is not None and (value >= high if high_open else value > high):
        errors.append(f"{key}={value!r} must be {'<' if high_open else '<='} {high}")


def validate_config(cfg: ml_collections.ConfigDict) -> None:
    """Refuses values no run can use (train.steps <= 0, seq_len=0, dropout >= 1, n_layer=0,
    ...) with one line naming every bad field, before anything is built."""
    errors: list[str] = []
    train = cfg.get("train") or {}
    for key, low in (("steps", 1), ("batch_size", 1), ("micro_batches", 1), ("max_to_keep", 1)):
        if key in train:
            _check_range(errors, f"train.{key}", train[key], low=low)
    for key in ("log_every", "eval_every", "eval_batches", "checkpoint_every", "checkpoint_minutes",
                "eval_minutes", "skip_loss_z", "rollback_after"):
        if key in train:
            _check_range(errors, f"train.{key}", train[key], low=0)
    if "ema_decay" in train:
        _check_range(errors, "train.ema_decay", train["ema_decay"], low=0, high=1, high_open=True)
    if float(train.get("skip_loss_z", 0) or 0) > 0:
        _check_range(errors, "train.skip_window", train.get("skip_window", 128), low=2)
    optim = cfg.get("optim") or {}
    for key in ("lr", "min_lr", "warmup_steps", "weight_decay", "clip_norm", "eps"):
        if key in optim:
            _check_range(errors, f"optim.{key}", optim[key], low=0)
    for section in ("model", "data"):
        for key, value in (cfg.get(section) or {}).items():
            if key in POSITIVE_FIELDS:
                _check_range(errors, f"{section}.{key}", value, low=1)
            elif "dropout" in key:
                _check_range(errors, f"{section}.{key}", value, low=0, high=1, high_open=True)
    if errors:
        raise ConfigError("invalid config: " + "; ".join(errors))


def list_configs(folder: str = "configs") -> list[str]:
    if not os.path.isdir(folder):
        return []
    return sorted(f"{folder}/{f}" for f in os.listdir(folder) if f.endswith(".py") and not f.startswith("_"))


def _parse_value(text: str, current: Any, key: str) -> Any:
    """Converts the command-line string to the type of the field it replaces."""
    if isinstance(current, bool):
        low = text.lower()
        if low in ("true", "1", "yes"):
            return True
        if low in ("false", "0", "no"):
            return False
        raise ConfigError(f"--config.{key}: expected a bool (true/false), got {text!r}")
    if isinstance(current, int):
        try:
            return int(text)
        except ValueError:
            try:
                as_float = float(text)
            except ValueError:
                as_float = None
            if as_float is not None and as_float.is_integer():
                return int(as_float)
            raise ConfigError(f"--config.{key}: expected an int, got {text!r}") from None
    if isinstance(current, float):
        try:
            return float(text)
        except ValueError:
            raise ConfigError(f"--config.{key}: expected a float, got {text!r}") from None
    if isinstance(current, str):
        return text
    if current is None:
        # A field whose default is None takes a Python literal, falling back to the string.
        try:
            return ast.literal_eval(text)
        except (ValueError, SyntaxError):
            return text
    if isinstance(current, (tuple, list)):
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            raise ConfigError(f"--config.{key}: expected a {type(current).__name__} literal, got {text!r}") from None
        if not isinstance(value, (tuple, list)):
            value = (value,)
        return type(current)(value)
    raise ConfigError(f"--config.{key}: cannot override a field of type {type(current).__name__}")


def apply_overrides(cfg: ml_collections.ConfigDict, overrides: Iterable[str]) -> None:
    """Sets each "a.b.c=value" in place. Unknown keys and wrong types raise ConfigError."""
    for item in overrides:
        key, eq, text = item.partition("=")
        if not eq:
            raise ConfigError(f"override {item!r} must look like --config.section.field=value")
        node = cfg
        parts = key.split(".")
        for depth, part in enumerate(parts):
            valid = sorted(node.keys())
            if part not in node:
                where = ".".join(parts[:depth]) or "<top level>"
                raise ConfigError(f"unknown config key --config.{key}: {where} has no field {part!r}; "
                                  f"valid: {', '.join(valid)}")
            if depth < len(parts) - 1:
                node = node[part]
                if not isinstance(node, ml_collections.ConfigDict):
                    raise ConfigError(f"--config.{key}: {'.'.join(parts[:depth + 1])} is a value, not a section")
        leaf = parts[-1]
        current = node[leaf]
        if isinstance(current, ml_collections.ConfigDict):
            raise ConfigError(f"--config.{key} is a section; set one of its fields: {', '.join(sorted(current.keys()))}")
        value = _parse_value(text, current, key)
        with node.ignore_type():
            node[leaf] = value
        if parts[:-1] == ["model"] and leaf == "size" and value != current:
            # A section listing every field would otherwise ignore the new size.
            from jaxmodels.models import resize_section
            resize_section(node, current, value)


def dataclass_from_dict(cls: Type[T], values: Mapping[str, Any], what: str = "") -> T:
    """Builds dataclass `cls` from `values`; unknown keys raise and list the valid fields."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(f"unknown {what or cls.__name__} field(s) {unknown}; valid: {', '.join(sorted(fields))}")
    kwargs = {}
    for name, value in values.items():
        default = fields[name].default
        if isinstance(value, list) and isinstance(default, tuple):
            value = tuple(value)
        kwargs[name] = value
    return cls(**kwargs)


def check_choice(what: str, field: str, value: Any, valid: Iterable) -> None:
    """Raises ConfigError "<what> model.<field>=<value>; valid: ..." unless value is in valid."""
    valid = tuple(valid)
    if value not in valid:
        raise ConfigError(f"{what} model.{field}={value!r}; valid: {', '.join(map(str, valid))}")
