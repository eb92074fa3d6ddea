"""Images -> VAE latent shards (+ labels, + cached caption embeddings): `launch.encode`.

As DiT's extract_features: each image is resized (shorter side) and center-cropped to
image_size, scaled to [-1, 1] and encoded by the VAE; the stored latent is the Gaussian's
mean (or a draw with sample=True, keyed by the item index so a resumed run draws the
same). Flips: "none"; "random" (each item flipped with probability 1/2, keyed by index);
"both" (every image and its mirror: twice the items, DiT-style augmentation done once).
A flipped image's caption has its words left/right swapped.
"""
from __future__ import annotations

import os
from typing import Callable, Optional

import numpy as np

from jaxmodels.config import ConfigError
from jaxmodels.data import images as image_data
from jaxmodels.data.latents import write_shards

FLIPS = ("none", "random", "both")


def image_items(source: str, path: str, image_size: int, tfds_data_dir: str = "", split: str = "train"):
    """The random-access image source to encode: "folder" (path/<class>/<image>), "tfds"
    (name in path) or "embedded" (the generated shapes; path = the number of items)."""
    if source == "folder":
        return image_data.FolderSource(path, image_size, 3, "skip")
    if source == "tfds":
        return image_data.TfdsSource(path, split, tfds_data_dir, image_size, 3)
    if source == "embedded":
        return image_data.GlyphSource(int(path or 1024), seed=0, split="train", image_size=image_size)
    raise ConfigError(f"unknown image source {source!r}; valid: folder, tfds, embedded")


class _Flipped:
    """Items of `base` with the flip policy applied (see module docstring)."""

    def __init__(self, base, flip: str, seed: int):
        if flip not in FLIPS:
            raise ConfigError(f"unknown flip {flip!r}; valid: {', '.join(FLIPS)}")
        self.base, self.flip, self.seed = base, flip, seed

    def __len__(self) -> int:
        return len(self.base) * (2 if self.flip == "both" else 1)

    def __getitem__(self, j: int) -> dict:
        if self.flip == "both":
            item, flipped = self.base[j // 2], bool(j % 2)
        else:
            item = self.base[j]
            flipped = self.flip == "random" and np.random.default_rng([self.seed, j]).random() < 0.5
        if flipped:
            item = dict(item, image=np.ascontiguousarray(item["image"][:, ::-1]),
                        caption=image_data.flip_caption(item.get("caption", "")))
        return item


def encode_dataset(items, out_dir: str, vae_path: str = "", batch_size: int = 32, shard_size: int = 1024,
                   flip: str = "none", sample: bool = False, seed: int = 0,
                   text_encoder: Optional[Callable[[list[str]], tuple[np.ndarray, np.ndarray]]] = None,
                   options: Optional[dict] = None, progress: bool = True) -> dict:
    """Encodes every item of `items` into shards under out_dir (resumable); returns the
    manifest. vae_path "" stores the pixels themselves (for pixel-space models) as
    "latents" in [-1, 1]; text_encoder(captions) -> (emb [n, L, D], mask [n, L]) adds
    cached caption embeddings."""
    import jax
    import jax.numpy as jnp

    if shard_size % batch_size:
        raise ConfigError(f"--shard-size {shard_size} must be a multiple of --batch-size {batch_size}")
    items = _Flipped(items, flip, seed)
    if vae_path:
        from jaxmodels.convert.vae import load_vae
        from jaxmodels.models import vae as vae_model

        model, params = load_vae(vae_path)
        scaling = model.cfg.scaling_factor

        @jax.jit
        def encode(images, rngs):
            mean, logvar = model.apply({"params": params}, images, method=vae_model.AutoencoderKL.encode)
            if not sample:
                return mean
            noise = jax.vmap(lambda r: jax.random.normal(r, mean.shape[1:], mean.dtype))(rngs)
            return mean + jnp.exp(0.5 * logvar) * noise
    else:
        scaling = 1.0
        encode = None

    def compute(start: int, stop: int) -> dict:
        batch_items = [items[j] for j in range(start, stop)]
        pixels = np.stack([image_data.to_unit_range(it["image"]) for it in batch_items])
        if encode is None:
            latents = pixels
        else:
            chunks = []
            for b in range(0, len(pixels), batch_size):
                chunk = pixels[b:b + batch_size]
                n = len(chunk)
                if n < batch_size:   # pad: one compiled shape for every batch
                    chunk = np.concatenate([chunk, np.zeros((batch_size - n,) + chunk.shape[1:], chunk.dtype)])
                rngs = jax.vmap(lambda j: jax.random.fold_in(jax.random.key(seed), j))(
                    jnp.arange(start + b, start + b + batch_size))
                chunks.append(np.asarray(encode(jnp.asarray(chunk), rngs))[:n])
            latents = np.concatenate(chunks)
        out = {"latents": latents.astype(np.float32),
               "label": np.asarray([it["label"] for it in batch_items], np.int32)}
        if text_encoder is not None:
            emb, mask = text_encoder([it.get("caption", "") for it in batch_items])
            out["text_emb"], out["text_mask"] = np.asarray(emb, np.float32), np.asarray(mask, bool)
        return out

    keys = ["label"] + (["text_emb", "text_mask"] if text_encoder is not None else []) + ["latents"]
    opts = dict(options or {}, vae=os.path.abspath(vae_path) if vae_path else "", flip=flip, sample=sample,
                seed=seed, batch_size=batch_size, scaling_factor=scaling)
    return write_shards(out_dir, len(items), shard_size, keys, opts, compute, progress=progress)
