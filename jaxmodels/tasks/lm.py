"""The causal language-modelling task, shared by every causal LM family (GPT, LLaMA, Mamba,
RWKV, RetNet, ...): next-token cross-entropy on the batches of jaxmodels/data/text.py.

Config fields it reads (besides model/data/train):
  task.eval_examples   sort: held-out sequences greedily sorted at each evaluation
  task.sample_tokens   text: tokens generated for workdir/samples.txt at each evaluation
  task.sample_prompt   text: tokens of the val split used as the sample's prompt
  task.carry_state     recurrent families: each batch row reads consecutive windows of one
                       stream and starts from the state the previous window ended with
                       (long context at constant memory; tasks/carry.py)
A model.vocab_size <= 0 means "the tokenizer's vocab size".
"""
from __future__ import annotations

import os
from typing import Any, Mapping, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxmodels.config import ConfigError
from jaxmodels.data.sort import SortSource
from jaxmodels.data.sources import check_token_ids, token_files
from jaxmodels.data.text import lm_dataset, load_splits, seq_len_of, text_dataset
from jaxmodels.layers.lm_head import HeadInput
from jaxmodels.models import build_model
from jaxmodels.tasks.base import PyTree, Task
from jaxmodels.tasks.carry import carry_of, check_family, init_carry, window_with_carry

TASK_DEFAULTS = dict(name="lm", eval_examples=500, sample_tokens=64, sample_prompt=16,
                     carry_state=False)


def lm_task_config(**overrides: Any) -> ml_collections.ConfigDict:
    """The `task` section of an LM config with every field present."""
    unknown = sorted(set(overrides) - set(TASK_DEFAULTS))
    if unknown:
        raise ConfigError(f"unknown task field(s) {unknown}; valid: {', '.join(sorted(TASK_DEFAULTS))}")
    return ml_collections.ConfigDict(dict(TASK_DEFAULTS, **overrides))


def model_section(name: str, size: str = "", **overrides: Any) -> ml_collections.ConfigDict:
    """A config `model` section listing every field of the family's Config (so each can be
    overridden on the command line), starting from the named size plus `overrides`."""
    import dataclasses

    from jaxmodels.models import family, sized_config

    fam = family(name)
    values = dict(overrides, size=size) if size else dict(overrides)
    model_cfg = sized_config(fam.Config, fam.SIZES, values, name)
    fields = {f.name: getattr(model_cfg, f.name) for f in dataclasses.fields(model_cfg)}
    return ml_collections.ConfigDict(dict(name=name, size=size, **fields) if size else dict(name=name, **fields))


def smoke_run(c: ml_collections.ConfigDict) -> None:
    """Turns an LM config into its `:smoke` run, in place: ~20 steps on the embedded byte
    corpus with checkpoints at 10 and 20 (the tests resume from them). The model section
    is the caller's: shrink it to a tiny size with vocab_size=256."""
    c.data.update(source="embedded", path="", tokenizer="byte", vocab_path="", seq_len=32,
                  max_bytes=300_000)
    c.optim.update(lr=3e-3, min_lr=3e-4, warmup_steps=5)
    c.train.update(steps=20, batch_size=8, micro_batches=1, log_every=5, eval_every=10,
                   eval_batches=2, checkpoint_every=10, progress=False)
    c.task.update(sample_tokens=16, sample_prompt=8)
    c.memory.check = False


def token_cross_entropy(logits_BTV: jax.Array, targets_BT: jax.Array,
                        mask_BT: jax.Array) -> tuple[jax.Array, dict]:
    """Mean next-token cross-entropy over the masked targets, computed in f32.

    Returns (loss, aux) with aux["weight"] = number of counted targets (the accumulation
    weight) and aux["accuracy"] = fraction of them that are the argmax.
    """
    logits_BTV = logits_BTV.astype(jnp.float32)
    mask_BT = mask_BT.astype(jnp.float32)
    logz_BT = jax.nn.logsumexp(logits_BTV, axis=-1)
    target_logit_BT = jnp.take_along_axis(logits_BTV, targets_BT[..., None].astype(jnp.int32), axis=-1)[..., 0]
    nll_BT = logz_BT - target_logit_BT
    weight = jnp.sum(mask_BT)
    denom = jnp.maximum(weight, 1.0)
    loss = jnp.sum(nll_BT * mask_BT) / denom
    correct_BT = (jnp.argmax(logits_BTV, axis=-1) == targets_BT).astype(jnp.float32)
    accuracy = jnp.sum(correct_BT * mask_BT) / denom
    return loss, {"weight": weight, "accuracy": accuracy}


def head_cross_entropy(head: HeadInput, targets_BT: jax.Array,
                       mask_BT: jax.Array) -> tuple[jax.Array, dict]:
    """token_cross_entropy from the LM head's inputs, through kernels.cross_entropy
    (chunked over the vocabulary by default: the logits are never all held at once)."""
    from jaxmodels.kernels import dispatch

    C = head.hidden.shape[-1]
    nll_N, correct_N = dispatch.cross_entropy(
        head.hidden.reshape(-1, C), head.weight_VC, targets_BT.reshape(-1), bias_V=head.bias_V,
        softcap=head.softcap, dtype=head.dtype)
    mask_N = mask_BT.reshape(-1).astype(jnp.float32)
    weight = jnp.sum(mask_N)
    denom = jnp.maximum(weight, 1.0)
    return jnp.sum(nll_N * mask_N) / denom, {"weight": weight, "accuracy": jnp.sum(correct_N * mask_N) / denom}


def _cfg_get(section: Any, key: str, default: Any) -> Any:
    return section.get(key, default) if section is not None and hasattr(section, "get") else default


def merge_pretrained(params: PyTree, loaded: PyTree, path: str = "") -> PyTree:
    """`params` with every leaf that `loaded` also has (same path, same shape) replaced.

    Leaves only in `params` (LoRA adapters, new heads) keep their fresh values. A shape
    mismatch, or no leaf in common, raises: that is a different model.
    """
    loaded_flat = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_flatten_with_path(loaded)[0]}
    used, mismatched = set(), []

    def take(key_path, fresh):
        key = jax.tree_util.keystr(key_path)
        if key not in loaded_flat:
            return fresh
        value = loaded_flat[key]
        if tuple(value.shape) != tuple(fresh.shape):
            mismatched.append(f"{key}: checkpoint {tuple(value.shape)} vs model {tuple(fresh.shape)}")
            return fresh
        used.add(key)
        return jnp.asarray(value, dtype=fresh.dtype)

    merged = jax.tree_util.tree_map_with_path(take, params)
    if mismatched:
        raise ConfigError(f"init_from {path!r} does not fit this model (set the model section to the "
                          f"checkpoint's sizes): " + "; ".join(mismatched[:8]))
    if not used:
        raise ConfigError(f"init_from {path!r}: no parameter names in common with this model "
                          f"(checkpoint has e.g. {sorted(loaded_flat)[:4]})")
    return merged


class LMTask(Task):
    """Causal LM: loss = next-token cross-entropy over data mask; throughput in tokens."""

    unit = "tokens"

    def __init__(self, cfg: ml_collections.ConfigDict):
        self.cfg = cfg
        self.data_cfg = cfg.data
        self.task_cfg = cfg.get("task", None)
        self.seq_len = seq_len_of(cfg.data)
        self._splits: Optional[dict] = None  # {"train": tokens, "val": tokens}
        self._tokenizer = None
        self._num_params: Optional[int] = None
        model_cfg = cfg.model.to_dict()
        if model_cfg.get("vocab_size", 1) <= 0:
            model_cfg["vocab_size"] = self.data_vocab_size()
        self.model = build_model(model_cfg)
        self.carry_state = carry_of(self.task_cfg)
        if self.carry_state:
            check_family(str(cfg.model.name))
            if self.is_sort or self.data_cfg.get("source") == "instruct":
                raise ConfigError("task.carry_state=True reads a token stream; data.source="
                                  f"{self.data_cfg.get('source')!r} has none: set task.carry_state=False")
        block = getattr(getattr(self.model, "cfg", None), "block_size", None)
        if block is not None and self.seq_len > block:
            raise ConfigError(f"data.seq_len={self.seq_len} exceeds model.block_size={block} (the model "
                              f"has no positions beyond it): lower data.seq_len or raise model.block_size")

    # ------------------------------------------------------------------ data
    @property
    def is_sort(self) -> bool:
        return self.data_cfg.get("source") == "sort"

    def _load(self):
        if self._splits is None and not self.is_sort:
            if self.data_cfg.get("source") == "instruct":  # Alpaca data: jaxmodels/data/instruct.py
                from jaxmodels.data.instruct import load_instruct
                self._splits, self._tokenizer = load_instruct(self.data_cfg)
            else:
                self._splits, self._tokenizer = load_splits(self.data_cfg)
                vocab = getattr(getattr(getattr(self, "model", None), "cfg", None), "vocab_size", None)
                if self.data_cfg.get("source") == "tokens" and vocab:
                    check_token_ids(self._splits, token_files(self.data_cfg), int(vocab))
        return self._splits, self._tokenizer

    @property
    def tokenizer(self):
        """The data's tokenizer (None for the sort task, whose tokens are the digits, and
        for pre-tokenized data whose tokenizer files are absent)."""
        return self._load()[1]

    def data_vocab_size(self) -> Optional[int]:
        if self.is_sort:
            return int(self.data_cfg.get("sort_digits", 3))
        tokenizer = self.tokenizer
        if tokenizer is None:
            raise ConfigError("model.vocab_size=0 needs a tokenizer to take the size from; "
                              "set model.vocab_size explicitly")
        return int(tokenizer.vocab_size)

    def _check_vocab(self) -> None:
        model_vocab = getattr(getattr(self.model, "cfg", None), "vocab_size", None)
        if not self.is_sort and self.tokenizer is None:
            return  # pre-tokenized data without its tokenizer: nothing to compare
        data_vocab = self.data_vocab_size()
        if model_vocab is not None and data_vocab > model_vocab:
            raise ConfigError(f"the {self.data_cfg.get('tokenizer', 'sort')} tokenizer has {data_vocab} tokens but "
                              f"model.vocab_size={model_vocab}: set --config.model.vocab_size={data_vocab} "
                              "(or 0 for 'the tokenizer's size')")

    def dataset(self, split: str, batch_size: int, seed: int):
        self._check_vocab()
        if self.is_sort:
            return lm_dataset(self.data_cfg, split, batch_size, seed)
        if self.data_cfg.get("source") == "instruct":
            from jaxmodels.data.instruct import instruct_dataset
            return instruct_dataset(self.data_cfg, split, batch_size, seed, self.tokenizer)
        splits, _ = self._load()
        return text_dataset(self.data_cfg, split, batch_size, seed, splits=splits, stream=self.carry_state)

    def abstract_batch(self, batch_size: int) -> dict:
        shape = (batch_size, self.seq_len)
        return {"inputs": jax.ShapeDtypeStruct(shape, jnp.int32),
                "targets": jax.ShapeDtypeStruct(shape, jnp.int32),
                "mask": jax.ShapeDtypeStruct(shape, jnp.float32)}

    # ------------------------------------------------------------------ model
    def init_params(self, rng: jax.Array) -> PyTree:
        tokens = jnp.zeros((1, self.seq_len), jnp.int32)
        return self.model.init({"params": rng}, tokens)["params"]

    def logits(self, params: PyTree, tokens_BT: jax.Array, rng: Optional[jax.Array] = None,
               train: bool = False, **kwargs) -> jax.Array:
        if train:
            return self.model.apply({"params": params}, tokens_BT, train=True, rngs={"dropout": rng}, **kwargs)
        return self.model.apply({"params": params}, tokens_BT, **kwargs)

    def head_input_supported(self) -> bool:
        """Whether the loss goes through kernels.cross_entropy: the family can return its
        head inputs (layers/lm_head.py) and kernels.cross_entropy is not "dense"."""
        import inspect

        from jaxmodels.kernels import dispatch

        takes = "head_input" in inspect.signature(type(self.model).__call__).parameters
        return takes and dispatch.choice("cross_entropy") != "dense"

    def init_carry(self, batch_size: int) -> Optional[PyTree]:
        return init_carry(self.model, batch_size) if self.carry_state else None

    def carried_loss(self, params: PyTree, batch: Mapping[str, Any], rng: jax.Array,
                     train: bool = True) -> tuple[jax.Array, dict]:
        """The loss of a window that starts from batch["carry"]; aux["carry"] is the state
        the next window starts from (tasks/carry.py)."""
        kwargs = dict(train=True, rngs={"dropout": rng}) if train else {}
        out, carry = window_with_carry(self.model, params, batch["inputs"], batch["carry"],
                                       head_input=self.head_input_supported(), **kwargs)
        if isinstance(out, HeadInput):
            loss, aux = head_cross_entropy(out, batch["targets"], batch["mask"])
        else:
            loss, aux = token_cross_entropy(out, batch["targets"], batch["mask"])
        return loss, {**aux, "carry": carry}

    def loss(self, params: PyTree, batch: Mapping[str, jax.Array], rng: jax.Array,
             train: bool = True) -> tuple[jax.Array, dict]:
        if "carry" in batch:
            return self.carried_loss(params, batch, rng, train)
        if getattr(getattr(self.model, "cfg", None), "is_moe", False):
            return self.moe_loss(params, batch, rng, train)  # logits + the router losses
        if self.head_input_supported():
            out = self.logits(params, batch["inputs"], rng, train, head_input=True)
            if isinstance(out, HeadInput):  # else the family gave logits (e.g. a LoRA head)
                return head_cross_entropy(out, batch["targets"], batch["mask"])
        else:
            out = self.logits(params, batch["inputs"], rng, train)
        return token_cross_entropy(out, batch["targets"], batch["mask"])

    def moe_loss(self, params: PyTree, batch: Mapping[str, jax.Array], rng: jax.Array,
                 train: bool = True) -> tuple[jax.Array, dict]:
        """Mixture-of-Experts models: cross-entropy plus, in training, the router losses of
        every MoE layer (model.moe_aux_weight * Switch balance + model.moe_z_weight * z-loss,
        jaxmodels.layers.moe). aux carries "ce" and the routing metrics (loads, drops,
        entropy). Evaluation returns the cross-entropy alone, comparable with a dense model."""
        from jaxmodels.layers.moe import collect

        kwargs = dict(train=True, rngs={"dropout": rng}) if train else {}
        logits_BTV, state = self.model.apply({"params": params}, batch["inputs"], mutable=["moe"], **kwargs)
        ce, aux = token_cross_entropy(logits_BTV, batch["targets"], batch["mask"])
        cfg = self.model.cfg
        router_loss, metrics = collect(state.get("moe", {}), cfg.moe_aux_weight, cfg.moe_z_weight)
        return (ce + router_loss if train else ce), {**aux, **metrics, "ce": ce}

    def units_per_example(self, batch: Optional[Mapping[str, Any]] = None) -> float:
        return float(self.seq_len)

    def num_params(self) -> int:
        if self._num_params is None:
            shapes = jax.eval_shape(self.init_params, jax.random.key(0))
            self._num_params = int(sum(np.prod(x.shape) for x in jax.tree.leaves(shapes)))
        return self._num_params

    def flops_per_example(self) -> float:
        if hasattr(self.model, "flops_per_token"):
            return float(self.model.flops_per_token(self.seq_len)) * self.seq_len
        return 6.0 * self.num_params() * self.seq_len

    def trainable_mask(self, params: PyTree) -> Optional[PyTree]:
        if hasattr(self.model, "trainable_mask"):
            return self.model.trainable_mask(params)
        return super().trainable_mask(params)  # model.adapters (layers/adapters.py) or None

    def load_init_from(self, params: PyTree, path: str) -> PyTree:
        from jaxmodels.convert.pretrained import load_pretrained, restore_into

        if hasattr(self.model, "load_pretrained"):
            # The family reads the weights into its own layout tensor by tensor (LLaMA:
            # NF4-quantised as loaded for QLoRA, LoRA adapters kept fresh).
            return self.model.load_pretrained(params, path)
        _, loaded = load_pretrained(path)
        if self.trainable_mask(params) is not None:
            # Adapters (LoRA) are not in the pretrained checkpoint: keep them fresh.
            from jaxmodels.layers.adapters import quantize_like

            return merge_pretrained(params, quantize_like(loaded, params), path)
        return restore_into(params, loaded, path)

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, params: PyTree, step: int, workdir: str) -> dict:
        if self.is_sort:
            return {"sort_exact_match": self.sort_exact_match(params)}
        self.write_sample(params, step, workdir)
        return {}

    def sort_exact_match(self, params: PyTree, num_examples: Optional[int] = None) -> float:
        """Fraction of held-out digit sequences that greedy decoding sorts exactly."""
        from jaxmodels.generate import greedy

        n = num_examples or int(_cfg_get(self.task_cfg, "eval_examples", 500))
        length = int(self.data_cfg.get("sort_length", 6))
        # A fixed seed: every evaluation judges the same held-out sequences.
        source = SortSource("val", seed=12345, length=length,
                            num_digits=int(self.data_cfg.get("sort_digits", 3)), num_examples=n)
        digits_NL = np.stack([source.digits(i) for i in range(n)]).astype(np.int32)
        out_NS = np.asarray(greedy(self.model, params, jnp.asarray(digits_NL), length))
        return float(np.mean(np.all(out_NS[:, length:2 * length] == np.sort(digits_NL, axis=1), axis=1)))

    def write_sample(self, params: PyTree, step: int, workdir: str) -> str:
        """Continues the start of the val split (temperature 0.8, top-k 200 as nanoGPT's
        sample.py; the rng is fixed by the step) and appends the text to workdir/samples.txt."""
        from jaxmodels.generate import sample

        splits, tokenizer = self._load()
        n_prompt = int(_cfg_get(self.task_cfg, "sample_prompt", 16))
        n_new = int(_cfg_get(self.task_cfg, "sample_tokens", 64))
        n_prompt = max(1, min(n_prompt, self.seq_len - 1))
        n_new = max(1, min(n_new, self.seq_len - n_prompt))
        prompt = np.asarray(splits["val"][:n_prompt], np.int32)[None]
        out = np.asarray(sample(self.model, params, jnp.asarray(prompt), n_new, jax.random.key(step),
                                temperature=0.8, top_k=200))[0]
        if tokenizer is None:  # pre-tokenized data without tokenizer files: show the ids
            text = f"{out[:n_prompt].tolist()} [->] {out[n_prompt:].tolist()}"
        else:
            text = tokenizer.decode(out[:n_prompt]) + "[->]" + tokenizer.decode(out[n_prompt:])
        if workdir:
            os.makedirs(workdir, exist_ok=True)
            with open(os.path.join(workdir, "samples.txt"), "a", encoding="utf-8") as f:
                f.write(f"=== step {step} ===\n{text}\n\n")
        return text
