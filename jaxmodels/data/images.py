"""Image data for the diffusion task: sources by `data.source`, one grain pipeline.

  embedded  the generated coloured-shapes dataset (data/glyphs.py): class = shape, caption
            says every attribute; train never sees the held-out attribute combinations,
            "val" is drawn from them only. No files, no network.
  folder    data.path/<class name>/<image>; an optional <image stem>.txt beside an image is
            its caption (default: the class name). Resized (shorter side) + center-cropped.
  tfds      tfds.data_source(data.tfds_name) of an ALREADY PREPARED dataset (mnist,
            cifar10, ...) under data.tfds_data_dir; never downloads, fails fast instead.
  arrays    precomputed latents/embeddings: data.path is a .npy (images/latents only) or
            .npz with "image" (or "latents") [N,H,W,C], optional "label" [N], "text_emb"
            [N,L,D] + "text_mask" [N,L]; multiplied by data.latent_scale.

Batches are dicts of numpy: image f32 [B,H,W,C] in [-1, 1] (latents as stored x scale),
label int32 [B], and when data.text: text_tokens int32 [B,L] (caption bytes, pad 256) and
text_mask bool [B,L] (or text_emb/text_mask from "arrays").
"""
from __future__ import annotations

import os
import warnings
from typing import Any, Optional

import grain
import numpy as np
from PIL import Image

from jaxmodels.config import ConfigError
from jaxmodels.data import glyphs
from jaxmodels.data.sources import DataError

IMAGE_SOURCES = ("embedded", "folder", "tfds", "arrays")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


def _get(cfg: Any, key: str, default: Any = None) -> Any:
    return cfg.get(key, default) if hasattr(cfg, "get") else getattr(cfg, key, default)


# Caption tokens are UTF-8 bytes right-padded with 256, the byte text encoder's PAD
# (jaxmodels/layers/text_encoder.py: vocab = 256 bytes + PAD).
CAPTION_PAD = 256


def encode_caption(text: str, length: int) -> tuple[np.ndarray, np.ndarray]:
    """Caption -> (int32 [length] UTF-8 bytes padded with CAPTION_PAD, bool [length] mask)."""
    data = np.frombuffer(text.encode("utf-8")[:length], np.uint8)
    tokens = np.full(length, CAPTION_PAD, np.int32)
    tokens[:len(data)] = data
    mask = np.zeros(length, bool)
    mask[:len(data)] = True
    return tokens, mask


def decode_caption(tokens: np.ndarray) -> str:
    """Inverse of encode_caption (pads dropped)."""
    return bytes(int(t) for t in np.asarray(tokens) if t < 256).decode("utf-8", errors="replace")


def flip_caption(text: str) -> str:
    """The caption of the horizontally flipped image: swaps the words left and right."""
    return " ".join({"left": "right", "right": "left"}.get(w, w) for w in text.split(" "))


def to_unit_range(image_u8: np.ndarray) -> np.ndarray:
    """uint8 [0, 255] -> float32 [-1, 1]."""
    return image_u8.astype(np.float32) / 127.5 - 1.0


def from_unit_range(image: np.ndarray) -> np.ndarray:
    """float [-1, 1] -> uint8 [0, 255] (clipped)."""
    return np.clip(np.round((np.asarray(image, np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def resize_center_crop(img: Image.Image, size: int) -> Image.Image:
    """Resizes the shorter side to `size` (bicubic) and crops the center square."""
    w, h = img.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), Image.BICUBIC)
    left, top = (nw - size) // 2, (nh - size) // 2
    return img.crop((left, top, left + size, top + size))


def _pil_to_array(img: Image.Image, size: int, channels: int) -> np.ndarray:
    img = img.convert("L" if channels == 1 else "RGB")
    arr = np.asarray(resize_center_crop(img, size), np.uint8)
    return arr[..., None] if arr.ndim == 2 else arr


# ---------------------------------------------------------------- sources (random access)

class GlyphSource:
    """The embedded dataset as a grain random-access source: item i is a function of
    (seed, i, split). split: "train" | "holdout" | "all" (see data/glyphs.py)."""

    def __init__(self, size: int, seed: int = 0, split: str = "train", image_size: int = 32,
                 sizes: tuple[int, ...] | None = None):
        self.size, self.seed, self.split, self.image_size = size, seed, split, image_size
        self.sizes = sizes

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> dict:
        image, attrs = glyphs.example(self.seed, int(index), self.split, self.image_size, self.sizes)
        return {"image": image, "label": np.int32(attrs[0]), "attrs": np.asarray(attrs, np.int32),
                "caption": glyphs.caption(attrs)}


class FolderSource:
    """data.path/<class>/<image>; classes are the sorted sub-folder names.

    bad_images: what an image that cannot be decoded does: "skip" (a warning naming it, once,
    and the next image in its place, so the split keeps its length and order) or "error"
    (a DataError naming the file).
    """

    def __init__(self, root: str, image_size: int, channels: int = 3, bad_images: str = "skip"):
        if bad_images not in ("skip", "error"):
            raise ConfigError(f"data.bad_images={bad_images!r}; valid: skip, error")
        self.bad_images = bad_images
        self._warned: set = set()
        if not root or not os.path.isdir(root):
            raise ConfigError(f"data.source='folder' needs --config.data.path=<folder with one "
                              f"sub-folder per class>; got {root!r}")
        self.classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
        self.items: list[tuple[str, int]] = []
        for label, name in enumerate(self.classes):
            folder = os.path.join(root, name)
            for f in sorted(os.listdir(folder)):
                if f.lower().endswith(IMAGE_SUFFIXES):
                    self.items.append((os.path.join(folder, f), label))
        if not self.items:
            raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in sub-folders of {root!r}")
        self.image_size, self.channels = image_size, channels

    def __len__(self) -> int:
        return len(self.items)

    def _decode(self, path: str):
        with Image.open(path) as img:
            return _pil_to_array(img, self.image_size, self.channels)

    def __getitem__(self, index: int) -> dict:
        index = int(index)
        for attempt in range(len(self.items)):
            path, label = self.items[(index + attempt) % len(self.items)]
            try:
                image = self._decode(path)
                break
            except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
                if self.bad_images == "error":
                    raise DataError(f"cannot read image {path} ({type(e).__name__}: {e}); remove or "
                                    f"replace it, or set --config.data.bad_images=skip") from None
                if path not in self._warned:
                    self._warned.add(path)
                    warnings.warn(f"skipping unreadable image {path} ({type(e).__name__}: {e})",
                                  RuntimeWarning, stacklevel=2)
        else:
            raise DataError(f"no image under {os.path.dirname(os.path.dirname(path))} can be read")
        txt = os.path.splitext(path)[0] + ".txt"
        if os.path.isfile(txt):
            with open(txt, encoding="utf-8") as f:
                text = f.read().strip()
        else:
            text = self.classes[label]
        return {"image": image, "label": np.int32(label), "caption": text}


class TfdsSource:
    """An already prepared tfds image dataset, read with tfds.data_source (no download)."""

    def __init__(self, name: str, split: str, data_dir: Optional[str], image_size: int, channels: int):
        import tensorflow_datasets as tfds

        if not name:
            raise ConfigError("data.source='tfds' needs --config.data.tfds_name=<e.g. mnist, cifar10>")
        try:
            self.source = tfds.data_source(name, split=split, data_dir=data_dir or None, download=False)
        except Exception as e:  # not prepared: tfds raises assorted errors; say what to do
            raise FileNotFoundError(
                f"tfds dataset {name!r} split {split!r} is not prepared under "
                f"{data_dir or '~/tensorflow_datasets'} ({type(e).__name__}: {e}). jaxmodels never "
                f"downloads: on a machine with network run `pip install tensorflow-cpu && "
                f"tfds build {name} --file_format=array_record`, then copy the folder and set "
                f"--config.data.tfds_data_dir") from e
        self.image_size, self.channels = image_size, channels

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict:
        record = self.source[int(index)]
        image = np.asarray(record["image"], np.uint8)
        if image.ndim == 2:
            image = image[..., None]
        if image.shape[:2] != (self.image_size, self.image_size) or image.shape[-1] != self.channels:
            img = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
            image = _pil_to_array(img, self.image_size, self.channels)
        label = np.int32(record.get("label", 0))
        return {"image": image, "label": label, "caption": str(label)}


class ArraySource:
    """Precomputed latents (and optionally text embeddings) from a .npy / .npz file, or from
    a folder of shards written by `launch.encode` (jaxmodels/data/latents.py)."""

    def __init__(self, path: str, scale: float = 1.0):
        if path and os.path.isdir(path):
            from jaxmodels.data.latents import LatentShards

            shards = LatentShards(path)
            self.arrays = {("image" if key == "latents" else key): _ShardColumn(shards, key)
                           for key in shards.manifest["keys"]}
            self.scale = scale
            return
        if not path or not os.path.isfile(path):
            raise ConfigError(f"data.source='arrays' needs --config.data.path=<.npy or .npz file, or a "
                              f"`launch.encode` output folder>; got {path!r}")
        loaded = np.load(path, mmap_mode="r")
        if isinstance(loaded, np.ndarray):
            self.arrays = {"image": loaded}
        else:
            key = "image" if "image" in loaded else "latents" if "latents" in loaded else None
            if key is None:
                raise ConfigError(f"{path}: needs an 'image' or 'latents' array; has {sorted(loaded.files)}")
            self.arrays = {"image": loaded[key]}
            for k in ("label", "text_emb", "text_mask"):
                if k in loaded:
                    self.arrays[k] = loaded[k]
        self.scale = scale

    def __len__(self) -> int:
        return len(self.arrays["image"])

    def __getitem__(self, index: int) -> dict:
        i = int(index)
        out = {"image": np.asarray(self.arrays["image"][i], np.float32) * self.scale,
               "label": np.int32(self.arrays["label"][i]) if "label" in self.arrays else np.int32(0)}
        if "text_emb" in self.arrays:
            out["text_emb"] = np.asarray(self.arrays["text_emb"][i], np.float32)
            out["text_mask"] = np.asarray(self.arrays["text_mask"][i], bool)
        return out


class _ShardColumn:
    """One key of a LatentShards folder, indexable like an array (item i)."""

    def __init__(self, shards, key: str):
        self.shards, self.key = shards, key

    def __len__(self) -> int:
        return len(self.shards)

    def __getitem__(self, i: int):
        k, j = divmod(int(i), self.shards.shard_size)
        return self.shards.shards[k][self.key][j]


class _Slice:
    """Indices [start, stop) of another source (the train / val split of file sources)."""

    def __init__(self, source, start: int, stop: int):
        self.source, self.start, self.stop = source, start, stop

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, index: int):
        return self.source[self.start + int(index)]


def _holdout_split(source, split: str, val_size: int):
    """File sources keep their last val_size items (a fixed shuffle first) for "val"."""
    n = len(source)
    val_size = min(val_size, n // 10 if n >= 20 else 0)
    permuted = grain.MapDataset.source(source).shuffle(seed=1234)  # mixes classes before the cut
    if split == "val":
        return _Slice(permuted, n - val_size, n) if val_size else _Slice(permuted, 0, n)
    return _Slice(permuted, 0, n - val_size)


def image_source(data_cfg: Any, split: str):
    """The random-access source of one split ("train" | "val") described by data_cfg."""
    source = _get(data_cfg, "source", "embedded")
    size = int(_get(data_cfg, "image_size", 32))
    channels = int(_get(data_cfg, "channels", 3))
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    if source == "embedded":
        if channels != 3:
            raise ConfigError("the embedded dataset is RGB: set data.channels=3")
        try:
            sizes = glyphs.size_indices(tuple(_get(data_cfg, "glyph_sizes", ()) or ()))
        except ValueError as e:
            raise ConfigError(f"data.glyph_sizes: {e}") from None
        if split == "train":
            return GlyphSource(int(_get(data_cfg, "size", 1_000_000)), seed=0, split="train", image_size=size,
                               sizes=sizes)
        return GlyphSource(int(_get(data_cfg, "val_size", 512)), seed=1, split="holdout", image_size=size,
                           sizes=sizes)
    if source == "folder":
        return _holdout_split(FolderSource(_get(data_cfg, "path"), size, channels,
                                           str(_get(data_cfg, "bad_images", "skip"))), split,
                              int(_get(data_cfg, "val_size", 512)))
    if source == "tfds":
        tfds_split = _get(data_cfg, "tfds_train_split" if split == "train" else "tfds_val_split",
                          "train" if split == "train" else "test")
        return TfdsSource(_get(data_cfg, "tfds_name", ""), tfds_split, _get(data_cfg, "tfds_data_dir", ""),
                          size, channels)
    if source == "arrays":
        return _holdout_split(ArraySource(_get(data_cfg, "path"), float(_get(data_cfg, "latent_scale", 1.0))),
                              split, int(_get(data_cfg, "val_size", 512)))
    raise ConfigError(f"unknown image data.source {source!r}; valid: {', '.join(IMAGE_SOURCES)}")


def image_data_config(**overrides):
    """The `data` section of an image config: the embedded dataset's defaults + overrides.

    source/path as in the module docstring; image_size, channels; num_classes; text (add
    caption tokens to batches) and caption_len; flip (random horizontal flip, captions
    fixed); size (virtual length of the embedded train split), val_size; tfds_name,
    tfds_data_dir (tfds_train_split / tfds_val_split may be added); latent_scale (arrays);
    vae (arrays of latents: the diffusers VAE folder that encoded them, so samples decode
    to pictures); text_emb_shape ((tokens, width) of cached caption embeddings in arrays);
    glyph_sizes (embedded only: e.g. ("large",) draws only large shapes; () = every size);
    bad_images (folder: "skip" an undecodable image with a warning, or "error");
    num_threads, prefetch (grain read options).
    """
    import ml_collections

    d = dict(source="embedded", path="", image_size=32, channels=3, num_classes=glyphs.NUM_CLASSES,
             text=False, caption_len=72, flip=False, size=1_000_000, val_size=512,
             tfds_name="", tfds_data_dir="", latent_scale=1.0, num_threads=2, prefetch=4,
             glyph_sizes=(), bad_images="skip", vae="", text_emb_shape=())
    d.update(overrides)
    return ml_collections.ConfigDict(d)


# ---------------------------------------------------------------- pipeline

def _example_transform(data_cfg: Any):
    """Source item -> training example (numpy): scale to [-1, 1], tokenize the caption."""
    text = bool(_get(data_cfg, "text", False))
    caption_len = int(_get(data_cfg, "caption_len", 80))

    def transform(item: dict) -> dict:
        image = item["image"]
        out = {"image": to_unit_range(image) if image.dtype == np.uint8 else np.asarray(image, np.float32),
               "label": np.int32(item["label"])}
        if text and "text_emb" in item:
            out["text_emb"], out["text_mask"] = item["text_emb"], item["text_mask"]
        elif text:
            out["text_tokens"], out["text_mask"] = encode_caption(item["caption"], caption_len)
        return out

    return transform


def _random_flip(item: dict, rng: np.random.Generator) -> dict:
    """Horizontal flip with probability 1/2; a caption's left/right words are swapped too."""
    if rng.random() < 0.5:
        item = dict(item)
        item["image"] = np.ascontiguousarray(item["image"][:, ::-1])
        if "caption" in item:
            item["caption"] = flip_caption(item["caption"])
        if "attrs" in item:
            attrs = np.array(item["attrs"])
            attrs[3] = glyphs.mirror_position(int(attrs[3]))
            item["attrs"] = attrs
    return item


def image_dataset(data_cfg: Any, split: str, batch_size: int, seed: int):
    """Checkpointable grain IterDataset of batches; "train" shuffles and repeats forever,
    "val" is one ordered pass (drop_remainder)."""
    source = image_source(data_cfg, split)
    if len(source) < batch_size:
        raise ConfigError(f"the {split} split has {len(source)} examples, fewer than one batch of {batch_size}: "
                          f"lower train.batch_size or add images (a folder's val split is at most a tenth "
                          f"of it, and at most data.val_size)")
    ds = grain.MapDataset.source(source)
    if split == "train":
        ds = ds.shuffle(seed=seed).repeat()
        # "arrays" holds latents, which need not flip like pixels: flip pixel sources only.
        if _get(data_cfg, "flip", False) and _get(data_cfg, "source", "embedded") != "arrays":
            ds = ds.random_map(_random_flip, seed=seed + 1)
    ds = ds.map(_example_transform(data_cfg)).batch(batch_size, drop_remainder=True)
    return ds.to_iter_dataset(grain.ReadOptions(num_threads=int(_get(data_cfg, "num_threads", 2)),
                                                prefetch_buffer_size=int(_get(data_cfg, "prefetch", 4))))


def example_shapes(data_cfg: Any) -> dict:
    """{key: (per-example shape, dtype)} of one training example (for abstract batches)."""
    size, channels = int(_get(data_cfg, "image_size", 32)), int(_get(data_cfg, "channels", 3))
    shapes = {"image": ((size, size, channels), np.float32), "label": ((), np.int32)}
    if _get(data_cfg, "text", False):
        if _get(data_cfg, "source", "embedded") == "arrays" and _get(data_cfg, "text_emb_shape", None):
            length, dim = _get(data_cfg, "text_emb_shape")
            shapes["text_emb"] = ((int(length), int(dim)), np.float32)
            shapes["text_mask"] = ((int(length),), np.bool_)
        else:
            length = int(_get(data_cfg, "caption_len", 80))
            shapes["text_tokens"] = ((length,), np.int32)
            shapes["text_mask"] = ((length,), np.bool_)
    return shapes
