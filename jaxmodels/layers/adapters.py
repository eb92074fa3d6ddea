"""Adapters for every family: LoRA / QLoRA on any Dense chosen by name, and RWKV state tuning.

A config turns them on with a `model.adapters` section (every family's Config has an `adapters`
field):

    model.adapters = dict(rank=16, alpha=32, targets="att/(key|value)|ffn/key", quant="nf4")

How it works without a second code path per family:
  * the family's top-level __call__ is wrapped in `scoped`, which makes the spec the
    "current" one while the module traces;
  * jaxmodels.layers.dense.Dense (the one dense layer every family uses) asks `current()`
    and, when its module path matches `targets` (a regex, re.search over "a/b/c"),
    becomes a LoRA dense: the same "kernel" / "bias" params (or, with quant="nf4" and a
    path matching `quant_targets`, the NF4 leaves "kernel_nf4" of jaxmodels.layers.quant)
    plus "lora_a" [in, r] and "lora_b" [r, out] (zero, so a fresh adapter changes nothing);
  * what trains is only a mask (`trainable_mask`): lora_a / lora_b, RWKV's "state0" with
    state_tuning, and leaves whose path matches `train_also`; the train step takes gradients
    w.r.t. those leaves only, so the frozen base costs no gradient or optimizer memory.
  * `base_dtype="bfloat16"` stores the frozen base in bf16 (Dense kernels are created so;
    the trainer casts every other frozen float leaf after init: `store_frozen`).

`merge` folds the adapters back (W + alpha/r A B, NF4 de-quantised first) and returns a
plain f32 tree that the same family without `model.adapters` loads.
"""
from __future__ import annotations

import dataclasses
import functools
import re
from contextvars import ContextVar
from typing import Any, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np

from jaxmodels.config import ConfigError, check_choice

QUANT_KINDS = ("none", "nf4")
BASE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
LORA_LEAVES = ("lora_a", "lora_b")
STATE_LEAF = "state0"


@dataclasses.dataclass(frozen=True)
class AdapterSpec:
    """What `model.adapters` holds (see the module docstring). Frozen, so configs stay hashable."""
    rank: int = 0                 # 0: no LoRA matrices (QLoRA base or state tuning alone)
    alpha: float = 16.0           # the update is scaled by alpha / rank
    targets: str = ".*"           # regex over Dense module paths that get adapters
    quant: str = "none"           # "nf4": frozen base Dense kernels stored in 4 bits (QLoRA)
    quant_targets: str = ".*"     # regex over Dense paths quantised when quant="nf4"
    base_dtype: str = "float32"   # storage of the frozen base: "float32" | "bfloat16"
    state_tuning: bool = False    # RWKV: a trainable initial state per layer ("state0")
    train_also: str = ""          # regex over param paths that train too (e.g. "ln_out"); "" none

    def __post_init__(self):
        check_choice("adapters", "quant", self.quant, QUANT_KINDS)
        check_choice("adapters", "base_dtype", self.base_dtype, BASE_DTYPES)
        if self.rank < 0:
            raise ConfigError(f"model.adapters.rank={self.rank} must be >= 0 (0: no LoRA matrices)")
        for name in ("targets", "quant_targets", "train_also"):
            try:
                re.compile(getattr(self, name))
            except re.error as e:
                raise ConfigError(f"model.adapters.{name}={getattr(self, name)!r} is not a regex: {e}") from None
        if not (self.rank > 0 or self.state_tuning):
            raise ConfigError("model.adapters trains nothing: set adapters.rank > 0 (LoRA) or "
                              "adapters.state_tuning=True (RWKV)")

    @property
    def scale(self) -> float:
        return self.alpha / self.rank if self.rank else 0.0

    def lora_on(self, path: str) -> bool:
        return self.rank > 0 and re.search(self.targets, path) is not None

    def nf4_on(self, path: str) -> bool:
        return self.quant == "nf4" and re.search(self.quant_targets, path) is not None

    @property
    def storage_dtype(self):
        return BASE_DTYPES[self.base_dtype]


def spec_from(value: Any) -> Optional[AdapterSpec]:
    """None / {} -> None; a mapping (config section) or an AdapterSpec -> AdapterSpec."""
    if value is None or isinstance(value, AdapterSpec):
        return value
    if hasattr(value, "to_dict"):  # an ml_collections section
        value = value.to_dict()
    if not isinstance(value, Mapping):
        raise ConfigError(f"model.adapters must be a dict of adapter settings, got {value!r}")
    if not value:
        return None
    fields = {f.name for f in dataclasses.fields(AdapterSpec)}
    unknown = sorted(set(value) - fields)
    if unknown:
        raise ConfigError(f"unknown model.adapters field(s) {unknown}; valid: {', '.join(sorted(fields))}")
    return AdapterSpec(**dict(value))


_CURRENT: ContextVar[Optional[AdapterSpec]] = ContextVar("adapter_spec", default=None)


def current() -> Optional[AdapterSpec]:
    """The spec of the model being traced (None: plain model)."""
    return _CURRENT.get()


def scoped(method):
    """Decorates a family's top-level __call__: its `self.cfg.adapters` is current while it runs."""
    @functools.wraps(method)
    def wrapped(self, *args, **kwargs):
        token = _CURRENT.set(spec_from(getattr(self.cfg, "adapters", None)))
        try:
            return method(self, *args, **kwargs)
        finally:
            _CURRENT.reset(token)
    return wrapped


def spec_of(model) -> Optional[AdapterSpec]:
    return spec_from(getattr(getattr(model, "cfg", None), "adapters", None))


# --------------------------------------------------------------------------- masks and storage


def _path_str(path) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def trainable_mask(model, params) -> Optional[Any]:
    """Bool pytree of the leaves that train under the model's adapters; None without them."""
    spec = spec_of(model)
    if spec is None:
        return None

    def trains(path, _):
        name = _path_str(path[-1:])
        if name in LORA_LEAVES or (spec.state_tuning and name == STATE_LEAF):
            return True
        return bool(spec.train_also) and re.search(spec.train_also, _path_str(path)) is not None

    return jax.tree_util.tree_map_with_path(trains, params)


def store_frozen(params, trainable, dtype) -> Any:
    """Frozen float leaves cast to `dtype` (bf16 base); trainable and integer leaves kept."""
    if trainable is None:
        return params

    def one(p, t):
        if t or not jnp.issubdtype(p.dtype, jnp.floating) or p.dtype == dtype:
            return p
        if isinstance(p, jax.ShapeDtypeStruct):
            return jax.ShapeDtypeStruct(p.shape, dtype, sharding=getattr(p, "sharding", None))
        return p.astype(dtype)

    return jax.tree.map(one, params, trainable)


def storage_dtype_of(model):
    """The frozen-base dtype the model's adapters ask for, or None (keep f32)."""
    spec = spec_of(model)
    if spec is None or spec.base_dtype == "float32":
        return None
    return spec.storage_dtype


# --------------------------------------------------------------------------- merge


def merge(params: Mapping, spec: AdapterSpec, base: Mapping) -> dict:
    """Adapters folded into their bases (W + alpha/r A B, NF4 de-quantised first), state0
    dropped, every float leaf f32: a tree for the same family built without `model.adapters`.

    base: that plain model's param tree or its shapes (jax.eval_shape of its init), which
    gives each NF4 kernel its shape and is checked leaf by leaf.
    """
    from jaxmodels.layers import quant

    def dequant(qleaves, shape):
        q = {k: np.asarray(v) for k, v in qleaves.items()}
        if q["nf4"].ndim == 2:  # stacked by a layer scan: one quantisation per layer
            return np.stack([quant.nf4_dequantize({k: v[i] for k, v in q.items()}, shape[1:], np.float32, xp=np)
                             for i in range(q["nf4"].shape[0])])
        return quant.nf4_dequantize(q, shape, np.float32, xp=np)

    def walk(node, ref, where):
        if not isinstance(node, Mapping):
            x = np.asarray(node)
            x = x.astype(np.float32) if np.issubdtype(x.dtype, np.floating) else x
            if tuple(x.shape) != tuple(ref.shape):
                raise ValueError(f"{where}: adapter tree has shape {x.shape}, the base model {ref.shape}")
            return x
        node = dict(node)
        node.pop(STATE_LEAF, None)
        a, b = node.pop("lora_a", None), node.pop("lora_b", None)
        if "kernel_nf4" in node:
            node["kernel"] = dequant(node.pop("kernel_nf4"), tuple(ref["kernel"].shape))
        extra = sorted(set(node) - set(ref))
        if extra:
            raise ValueError(f"{where}: {extra} are not in the base model (merge with the model's own config)")
        out = {k: walk(v, ref[k], f"{where}/{k}") for k, v in node.items()}
        if a is not None:
            delta = np.einsum("...ir,...ro->...io", np.asarray(a, np.float32), np.asarray(b, np.float32))
            out["kernel"] = out["kernel"] + delta * np.float32(spec.scale)
        return out

    return walk(params, base, "params")


def quantize_like(loaded: Mapping, params: Mapping) -> Any:
    """A pretrained tree with each "kernel" NF4-quantised where `params` (a QLoRA model)
    holds "kernel_nf4" instead, so init_from fills a QLoRA base; other leaves unchanged.
    Stacked (scanned) kernels are quantised layer by layer, as the model initialises them."""
    from jaxmodels.layers import quant

    def one(w, stacked):
        w = np.asarray(w, np.float32)
        if stacked:
            per = [quant.nf4_quantize(w[i], xp=np) for i in range(w.shape[0])]
            return {k: np.stack([p[k] for p in per]) for k in per[0]}
        return quant.nf4_quantize(w, xp=np)

    def walk(node, ref):
        if not isinstance(node, Mapping) or not isinstance(ref, Mapping):
            return node
        out = {}
        for k, v in node.items():
            if k == "kernel" and "kernel_nf4" in ref and "kernel" not in ref:
                out["kernel_nf4"] = one(v, len(ref["kernel_nf4"]["nf4"].shape) == 2)
            else:
                out[k] = walk(v, ref.get(k)) if k in ref else v
        return out

    return walk(loaded, params)


def adapters_config(**values):
    """A config `model.adapters` section listing every AdapterSpec field (so each can be
    overridden on the command line: --config.model.adapters.rank=32)."""
    import ml_collections

    spec = spec_from(values)  # validates now, with the config's own error messages
    return ml_collections.ConfigDict(dataclasses.asdict(spec))
