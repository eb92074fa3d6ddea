"""Reading and writing safetensors folders tensor by tensor (never a whole model at once).

Handles a single `model.safetensors`, several `*.safetensors`, and sharded checkpoints with
`model.safetensors.index.json`. bf16 tensors are read through numpy as float32 on demand.
"""
from __future__ import annotations

import glob
import json
import os
from typing import Iterator

import numpy as np


def _files(folder: str) -> list[str]:
    index = os.path.join(folder, "model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index) as f:
            weight_map = json.load(f)["weight_map"]
        return sorted({os.path.join(folder, v) for v in weight_map.values()})
    files = sorted(glob.glob(os.path.join(folder, "*.safetensors")))
    if not files:
        raise FileNotFoundError(f"no *.safetensors in {folder!r} (PyTorch .bin checkpoints are not read; "
                                "convert them with `transformers` save_pretrained(safe_serialization=True))")
    return files


class SafetensorsFolder:
    """Lazy name -> numpy array access over every safetensors file of a folder."""

    def __init__(self, folder: str):
        from safetensors import safe_open

        self.folder = folder
        self._handles = {}
        self._where = {}
        for path in _files(folder):
            # framework="flax" would import jax arrays; numpy keeps host memory explicit.
            handle = safe_open(path, framework="numpy")
            self._handles[path] = handle
            for name in handle.keys():
                self._where[name] = path

    def keys(self) -> list[str]:
        return list(self._where)

    def __contains__(self, name: str) -> bool:
        return name in self._where

    def get(self, name: str, dtype=np.float32) -> np.ndarray:
        """One tensor as a numpy array in `dtype` (None: as stored)."""
        if name not in self._where:
            raise KeyError(f"tensor {name!r} not in {self.folder}")
        array = self._handles[self._where[name]].get_tensor(name)
        return array if dtype is None else np.asarray(array, dtype=dtype)

    def items(self, dtype=np.float32) -> Iterator[tuple[str, np.ndarray]]:
        for name in self._where:
            yield name, self.get(name, dtype)


def save_folder(tensors: dict, folder: str, config: dict, max_shard_bytes: int = 2 << 30) -> None:
    """Writes numpy tensors as (sharded) safetensors plus config.json, HF style."""
    from safetensors.numpy import save_file

    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    shards, current, size = [], {}, 0
    for name, array in tensors.items():
        array = np.ascontiguousarray(array)
        if current and size + array.nbytes > max_shard_bytes:
            shards.append(current)
            current, size = {}, 0
        current[name] = array
        size += array.nbytes
    shards.append(current)
    if len(shards) == 1:
        save_file(shards[0], os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})
        return
    weight_map = {}
    for i, shard in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, os.path.join(folder, fname), metadata={"format": "pt"})
        weight_map.update({name: fname for name in shard})
    with open(os.path.join(folder, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {}, "weight_map": weight_map}, f, indent=2)
