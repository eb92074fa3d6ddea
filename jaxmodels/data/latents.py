"""Latent shards: what `launch.encode` writes and the "arrays" image source reads.

A shard folder holds
  manifest.json           {"format": "jaxmodels-latents", "version": 1, "num_items",
                           "shard_size", "keys", "options" (how it was made), "complete"}
  <key>_<k:05d>.npy       one array per key and shard k (items k*shard_size ...): "latents"
                          f32 [n, h, w, c] (unscaled VAE latents, as DiT's recipe stores them),
                          "label" int32 [n], optionally "text_emb" [n, L, D] + "text_mask" [n, L]
Shards are written whole (temp file + rename, "latents" last), so a shard whose "latents"
file exists is complete; a re-run with the same options skips those and recomputes the
rest, which gives the same files as an uninterrupted run (inputs are read in a fixed order
and random draws are keyed by item index). Readers memory-map the .npy files.
"""
from __future__ import annotations

import json
import os
from typing import Callable, Mapping, Optional

import numpy as np

from jaxmodels.config import ConfigError

FORMAT = "jaxmodels-latents"
MANIFEST = "manifest.json"
LAST_KEY = "latents"   # written last: its file marks a shard complete


def shard_path(folder: str, key: str, k: int) -> str:
    return os.path.join(folder, f"{key}_{k:05d}.npy")


def _atomic_json(path: str, value: dict) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(value, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _atomic_npy(path: str, array: np.ndarray) -> None:
    tmp = path + ".tmp.npy"
    with open(tmp, "wb") as f:
        np.save(f, array)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_manifest(folder: str) -> Optional[dict]:
    path = os.path.join(folder, MANIFEST)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        manifest = json.load(f)
    if manifest.get("format") != FORMAT:
        raise ConfigError(f"{path} is not a latent-shard manifest (format {manifest.get('format')!r})")
    return manifest


def write_shards(folder: str, num_items: int, shard_size: int, keys: list[str], options: Mapping,
                 compute: Callable[[int, int], Mapping[str, np.ndarray]], progress: bool = True,
                 desc: str = "encode") -> dict:
    """Fills `folder` with the shards of items [0, num_items): compute(start, stop) returns
    {key: array [stop - start, ...]} for every key. Resumes a folder written with the same
    options; refuses one written with other options (naming them). Returns the manifest."""
    if LAST_KEY not in keys:
        raise ValueError(f"keys must include {LAST_KEY!r}")
    options = json.loads(json.dumps(dict(options)))   # as it will read back from JSON
    manifest = {"format": FORMAT, "version": 1, "num_items": int(num_items), "shard_size": int(shard_size),
                "keys": list(keys), "options": options, "complete": False}
    old = read_manifest(folder)
    if old is not None:
        changed = [k for k in ("num_items", "shard_size", "keys") if old.get(k) != manifest[k]]
        changed += [f"options.{k}" for k in sorted(set(old["options"]) | set(options))
                    if old["options"].get(k) != options.get(k)]
        if changed:
            raise ConfigError(f"{folder} was encoded with other settings ({', '.join(changed)}): pass the "
                              f"same options to resume it, or a new --out folder")
        manifest["complete"] = old.get("complete", False)
    os.makedirs(folder, exist_ok=True)
    _atomic_json(os.path.join(folder, MANIFEST), manifest)
    num_shards = -(-num_items // shard_size)
    todo = [k for k in range(num_shards) if not os.path.isfile(shard_path(folder, LAST_KEY, k))]
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=num_items, initial=num_items - sum(min(shard_size, num_items - k * shard_size)
                                                            for k in todo), desc=desc, unit="img")
    for k in todo:
        start, stop = k * shard_size, min(num_items, (k + 1) * shard_size)
        arrays = compute(start, stop)
        for key in [k_ for k_ in keys if k_ != LAST_KEY] + [LAST_KEY]:
            array = np.asarray(arrays[key])
            if len(array) != stop - start:
                raise ValueError(f"compute gave {len(array)} rows of {key!r} for items [{start}, {stop})")
            _atomic_npy(shard_path(folder, key, k), array)
        if bar is not None:
            bar.update(stop - start)
    if bar is not None:
        bar.close()
    manifest["complete"] = True
    _atomic_json(os.path.join(folder, MANIFEST), manifest)
    return manifest


class LatentShards:
    """Random access over a complete shard folder: item i -> {key: array} (memory-mapped)."""

    def __init__(self, folder: str):
        manifest = read_manifest(folder)
        if manifest is None:
            raise ConfigError(f"{folder!r} has no {MANIFEST}: write it with `python -m launch.encode --out {folder}`")
        if not manifest.get("complete"):
            raise ConfigError(f"{folder} is only partly encoded: re-run the same `python -m launch.encode` "
                              f"command to finish it")
        self.manifest = manifest
        self.num_items, self.shard_size = manifest["num_items"], manifest["shard_size"]
        num_shards = -(-self.num_items // self.shard_size)
        self.shards = [{key: np.load(shard_path(folder, key, k), mmap_mode="r") for key in manifest["keys"]}
                       for k in range(num_shards)]

    def __len__(self) -> int:
        return self.num_items

    def __getitem__(self, index: int) -> dict:
        k, i = divmod(int(index), self.shard_size)
        return {key: array[i] for key, array in self.shards[k].items()}

    def array(self, key: str) -> np.ndarray:
        """One key over every item, concatenated (loads it into memory)."""
        return np.concatenate([np.asarray(s[key]) for s in self.shards])
