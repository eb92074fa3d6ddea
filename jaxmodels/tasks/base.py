"""The Task contract: everything the shared trainer needs to know about one kind of training.

The trainer (`jaxmodels/train/`) never knows which family it trains. It asks the task for
initial params, a loss, data, the trainable subset and host-side evaluation. `tasks/lm.py`
serves every causal LM (GPT, LLaMA, Mamba, RWKV, RetNet, ...); `tasks/diffusion.py` every
diffusion backbone (DiT, PixArt, U-Net).
"""
from __future__ import annotations

import abc
from typing import Any, Mapping, Optional

import jax
import ml_collections

from jaxmodels.models import build_model

PyTree = Any


class Task(abc.ABC):
    """Base class; `cfg` is the whole experiment config (sections model/task/data/...)."""

    # What one example is counted as in throughput ("tokens", "images").
    unit: str = "examples"

    def __init__(self, cfg: ml_collections.ConfigDict):
        self.cfg = cfg
        self.model = build_model(cfg.model)

    @abc.abstractmethod
    def init_params(self, rng: jax.Array) -> PyTree:
        """Fresh f32 params (called under jax.jit / jax.eval_shape: must be traceable)."""

    @abc.abstractmethod
    def loss(self, params: PyTree, batch: Mapping[str, jax.Array], rng: jax.Array,
             train: bool = True) -> tuple[jax.Array, dict]:
        """Returns (mean loss over the batch, aux).

        aux["weight"] (scalar f32) is how many units the mean is over (target tokens for an
        LM, examples for diffusion). Gradient accumulation weights micro-batches by it, so
        k micro-batches give exactly the gradient of one batch k times larger. Every other
        aux entry is a scalar mean that is averaged with the same weights.
        """

    @abc.abstractmethod
    def dataset(self, split: str, batch_size: int, seed: int):
        """A checkpointable grain IterDataset of batches (dicts of numpy arrays, leading
        dim batch_size). split is "train" or "val"; "train" repeats forever."""

    @abc.abstractmethod
    def abstract_batch(self, batch_size: int) -> dict:
        """jax.ShapeDtypeStruct per batch entry (memory estimates compile on these)."""

    def units_per_example(self, batch: Optional[Mapping[str, Any]] = None) -> float:
        """Units (tokens, images) in one example, for throughput."""
        return 1.0

    def flops_per_example(self) -> float:
        """Model FLOPs of forward + backward for one example (for MFU); 0 if unknown."""
        return 0.0

    def trainable_mask(self, params: PyTree) -> Optional[PyTree]:
        """A bool pytree marking trainable leaves (LoRA, adapters); None = all trainable."""
        from jaxmodels.layers import adapters

        return adapters.trainable_mask(self.model, params)

    def init_carry(self, batch_size: int) -> Optional[PyTree]:
        """State carried from one training batch to the next (tasks/carry.py), batch axis
        first; None (the default) when batches are independent."""
        return None

    def load_init_from(self, params: PyTree, path: str) -> PyTree:
        """Replaces fresh params with a pretrained checkpoint (`config.init_from`)."""
        raise NotImplementedError(f"{type(self).__name__} cannot start from {path!r}")

    def evaluate(self, params: PyTree, step: int, workdir: str) -> dict:
        """Host-side evaluation beyond the val loss (accuracy, samples, image grids).

        Called at eval intervals and at the end with the params to judge (the EMA when the
        run keeps one). Returns scalar metrics to log.
        """
        return {}
