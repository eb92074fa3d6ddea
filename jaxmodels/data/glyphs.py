"""The embedded image dataset: coloured shapes ("glyphs"), generated on the fly, no network.

Every image is a function of (seed, index) only, so any machine regenerates the same data.
One example has five attributes, each an int in the table below, and a caption saying them:

  shape       8  circle square triangle diamond cross ring star hourglass  (the class label)
  colour      6  red green blue yellow purple orange
  size        2  small large
  position    5  centre, top left, top right, bottom left, bottom right
  background  3  black grey white

  "a small red triangle in the top left on a grey background"

Shapes are drawn 4x larger with PIL and downsampled (anti-aliased edges), with a 1-pixel
position jitter and a small colour jitter so no two images are identical. Every shape is
mirror-symmetric, so a horizontal flip is the same image with left/right swapped in the
position: `mirror_position` keeps captions true.

A fixed 10% of the 1440 attribute combinations is HELD OUT: split "train" never draws them,
split "holdout" draws only them. Text-to-image models are judged on held-out captions, so
they must compose attributes rather than recall a caption they trained on.
"""
from __future__ import annotations

import functools

import numpy as np
from PIL import Image, ImageDraw

# Bump when drawing changes: the judge's cache key includes it.
DATASET_VERSION = "glyphs-v1"

SHAPES = ("circle", "square", "triangle", "diamond", "cross", "ring", "star", "hourglass")
COLOURS = ("red", "green", "blue", "yellow", "purple", "orange")
SIZES = ("small", "large")
POSITIONS = ("centre", "top left", "top right", "bottom left", "bottom right")
BACKGROUNDS = ("black", "grey", "white")
ATTRIBUTES = {"shape": SHAPES, "colour": COLOURS, "size": SIZES, "position": POSITIONS,
              "background": BACKGROUNDS}
ATTRIBUTE_NAMES = tuple(ATTRIBUTES)
NUM_CLASSES = len(SHAPES)

_RGB = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (50, 80, 235),
        "yellow": (240, 215, 30), "purple": (150, 60, 200), "orange": (250, 140, 20)}
_BG = {"black": 20, "grey": 125, "white": 235}
_CENTRES = {"centre": (0.5, 0.5), "top left": (0.3125, 0.3125), "top right": (0.6875, 0.3125),
            "bottom left": (0.3125, 0.6875), "bottom right": (0.6875, 0.6875)}
_RADIUS = {"small": 0.17, "large": 0.31}  # fraction of the image side
_SUPERSAMPLE = 4
NUM_COMBOS = int(np.prod([len(v) for v in ATTRIBUTES.values()]))


def combo_index(attrs) -> int:
    """Mixed-radix index of an attribute tuple (shape, colour, size, position, background)."""
    index = 0
    for value, names in zip(attrs, ATTRIBUTES.values()):
        index = index * len(names) + int(value)
    return index


def combo_attrs(index: int) -> tuple[int, ...]:
    """Inverse of combo_index."""
    out = []
    for names in reversed(list(ATTRIBUTES.values())):
        index, value = divmod(index, len(names))
        out.append(value)
    return tuple(reversed(out))


def is_held_out(index: int) -> bool:
    """A fixed pseudo-random 10% of the combinations (Knuth multiplicative hash)."""
    return (index * 2654435761 % 2**32) % 10 == 0


@functools.lru_cache(maxsize=None)
def held_out_combos() -> np.ndarray:
    return np.array([i for i in range(NUM_COMBOS) if is_held_out(i)], np.int64)


@functools.lru_cache(maxsize=None)
def train_combos() -> np.ndarray:
    return np.array([i for i in range(NUM_COMBOS) if not is_held_out(i)], np.int64)


def caption(attrs) -> str:
    """The caption of an attribute tuple."""
    shape, colour, size, position, background = attrs
    where = "in the centre" if POSITIONS[position] == "centre" else f"in the {POSITIONS[position]}"
    return f"a {SIZES[size]} {COLOURS[colour]} {SHAPES[shape]} {where} on a {BACKGROUNDS[background]} background"


def mirror_position(position: int) -> int:
    """The position after a horizontal flip (left <-> right)."""
    name = POSITIONS[position]
    if "left" in name:
        return POSITIONS.index(name.replace("left", "right"))
    if "right" in name:
        return POSITIONS.index(name.replace("right", "left"))
    return position


def _polygon(shape: str, cx: float, cy: float, r: float) -> list:
    if shape == "square":
        s = r * 0.82
        return [(cx - s, cy - s), (cx + s, cy - s), (cx + s, cy + s), (cx - s, cy + s)]
    if shape == "triangle":
        return [(cx, cy - r), (cx + r * 0.95, cy + r * 0.75), (cx - r * 0.95, cy + r * 0.75)]
    if shape == "diamond":
        return [(cx, cy - r), (cx + r * 0.75, cy), (cx, cy + r), (cx - r * 0.75, cy)]
    if shape == "cross":
        a, w = r, r * 0.36
        return [(cx - w, cy - a), (cx + w, cy - a), (cx + w, cy - w), (cx + a, cy - w),
                (cx + a, cy + w), (cx + w, cy + w), (cx + w, cy + a), (cx - w, cy + a),
                (cx - w, cy + w), (cx - a, cy + w), (cx - a, cy - w), (cx - w, cy - w)]
    if shape == "star":
        angles = -np.pi / 2 + np.arange(10) * np.pi / 5
        radii = np.where(np.arange(10) % 2 == 0, r, r * 0.45)
        return [(cx + q * np.cos(a), cy + q * np.sin(a)) for q, a in zip(radii, angles)]
    if shape == "hourglass":
        s = r * 0.8
        return [(cx - s, cy - r), (cx + s, cy - r), (cx, cy), (cx + s, cy + r), (cx - s, cy + r), (cx, cy)]
    raise ValueError(shape)


def render(attrs, image_size: int = 32, jitter: np.ndarray | None = None) -> np.ndarray:
    """uint8 [image_size, image_size, 3] image of the attributes.

    jitter: 5 numbers in [-1, 1] (x shift, y shift, colour shift r/g/b); None = none.
    """
    shape, colour, size, position, background = (int(a) for a in attrs)
    jitter = np.zeros(5) if jitter is None else np.asarray(jitter, np.float64)
    side = image_size * _SUPERSAMPLE
    bg = int(np.clip(_BG[BACKGROUNDS[background]] + 12 * jitter[2], 0, 255))
    img = Image.new("RGB", (side, side), (bg, bg, bg))
    draw = ImageDraw.Draw(img)
    fx, fy = _CENTRES[POSITIONS[position]]
    cx = (fx + jitter[0] / image_size) * side  # +-1 output pixel
    cy = (fy + jitter[1] / image_size) * side
    r = _RADIUS[SIZES[size]] * side
    rgb = tuple(int(np.clip(c + 15 * j, 0, 255))
                for c, j in zip(_RGB[COLOURS[colour]], (jitter[3], jitter[4], -jitter[3])))
    name = SHAPES[shape]
    if name == "circle":
        draw.ellipse([cx - r * 0.9, cy - r * 0.9, cx + r * 0.9, cy + r * 0.9], fill=rgb)
    elif name == "ring":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=rgb)
        q = r * 0.55
        draw.ellipse([cx - q, cy - q, cx + q, cy + q], fill=(bg, bg, bg))
    else:
        draw.polygon(_polygon(name, cx, cy, r), fill=rgb)
    img = img.resize((image_size, image_size), Image.BOX)
    return np.asarray(img, np.uint8)


@functools.lru_cache(maxsize=None)
def combo_pool(split: str, sizes: tuple[int, ...] | None) -> np.ndarray:
    """Combination indices a split draws from, optionally only those with a size in `sizes`."""
    if split == "train":
        pool = train_combos()
    elif split == "holdout":
        pool = held_out_combos()
    elif split == "all":
        pool = np.arange(NUM_COMBOS)
    else:
        raise ValueError(f"unknown glyph split {split!r}; valid: train, holdout, all")
    if sizes is not None:
        pool = np.asarray([i for i in pool if combo_attrs(int(i))[2] in sizes])
    return pool


def size_indices(names) -> tuple[int, ...] | None:
    """("large",) -> (1,); empty/None -> None (every size). Unknown names are an error."""
    if not names:
        return None
    bad = [n for n in names if n not in SIZES]
    if bad:
        raise ValueError(f"unknown glyph size(s) {bad}; valid: {', '.join(SIZES)}")
    return tuple(sorted(SIZES.index(n) for n in names))


def sample_attrs(rng: np.random.Generator, split: str, sizes: tuple[int, ...] | None = None) -> tuple[int, ...]:
    """Random attributes: "train" avoids the held-out combinations, "holdout" draws only
    them, "all" draws from every combination; `sizes` (size indices) narrows any of them."""
    if split == "all" and sizes is None:
        return combo_attrs(int(rng.integers(NUM_COMBOS)))
    pool = combo_pool(split, sizes)
    return combo_attrs(int(pool[rng.integers(len(pool))]))


def example(seed: int, index: int, split: str = "train", image_size: int = 32,
            sizes: tuple[int, ...] | None = None):
    """(uint8 image, attribute tuple) of example `index` of the stream `seed`.

    sizes: restrict to these size indices (e.g. (1,) = large shapes only); None = all."""
    rng = np.random.default_rng([seed, index, {"train": 0, "holdout": 1, "all": 2}[split]])
    attrs = sample_attrs(rng, split, sizes)
    jitter = rng.uniform(-1.0, 1.0, size=5)
    return render(attrs, image_size, jitter), attrs


def write_folder(root: str, num: int, image_size: int = 32, split: str = "train", seed: int = 0) -> str:
    """Writes `num` examples as a captioned image folder: root/<shape>/<index>.png plus
    <index>.txt (its caption) -- the layout `data.source=folder` and `launch.encode` read,
    for tests and offline demos of the image-folder path. Returns root."""
    import os

    for name in SHAPES:
        os.makedirs(os.path.join(root, name), exist_ok=True)
    for i in range(num):
        image, attrs = example(seed, i, split, image_size)
        stem = os.path.join(root, SHAPES[attrs[0]], f"{i:06d}")
        Image.fromarray(image).save(stem + ".png")
        with open(stem + ".txt", "w", encoding="utf-8") as f:
            f.write(caption(attrs) + "\n")
    return root
