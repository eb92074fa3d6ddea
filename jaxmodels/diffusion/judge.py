"""The judge: a small CNN that reads the embedded glyph dataset's attributes off an image.

It scores generated images the way a classifier-based FID/IS would, but for our 32x32
dataset and in seconds on a CPU:
  judge_accuracy(images, labels)      fraction whose shape the judge reads as the label
                                      (class-conditional models, e.g. DiT with CFG)
  attribute_accuracy(images, attrs)   per-attribute agreement with the prompted caption
                                      (text-to-image models, e.g. PixArt)
  frechet_distance(real, fake)        Frechet distance of Gaussians fitted to the judge's
                                      penultimate features (an FID in a 128-d space)

The judge is trained once (a couple of minutes on 2 CPU cores) on freshly generated images
of every attribute combination, with a little pixel noise so slightly noisy samples are
still read, and cached with its held-out accuracy under $JAXMODELS_CACHE/judge (default
~/.cache/jaxmodels/judge), keyed by a hash of the dataset version and the judge recipe.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import time
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import serialization

from jaxmodels.data import glyphs
from jaxmodels.layers.dense import Dense

HEADS = {name: len(values) for name, values in glyphs.ATTRIBUTES.items()}


@dataclasses.dataclass(frozen=True)
class JudgeRecipe:
    width: int = 32          # channels of the first conv; doubles twice
    features: int = 128      # penultimate width (the Frechet feature space)
    train_size: int = 8000   # generated training images
    test_size: int = 2000    # generated held-out images (another seed)
    steps: int = 500
    batch_size: int = 128
    lr: float = 2e-3
    noise: float = 0.08      # std of the pixel noise added in training ([-1, 1] units)
    seed: int = 0


class JudgeNet(nn.Module):
    """3x3 convs 32->16->8->4 with GroupNorm + GELU, flattened (position matters, so no
    global pooling), a `features`-wide penultimate layer, one head per attribute."""
    width: int = 32
    features: int = 128

    @nn.compact
    def __call__(self, x_NHWC: jax.Array) -> tuple[jax.Array, dict]:
        w = self.width
        x = x_NHWC
        for i, (ch, stride) in enumerate([(w, 1), (w, 2), (2 * w, 1), (2 * w, 2), (4 * w, 2)]):
            x = nn.Conv(ch, (3, 3), strides=stride, name=f"conv{i}")(x)
            x = nn.GroupNorm(num_groups=8, name=f"norm{i}")(x)
            x = nn.gelu(x)
        feats = nn.gelu(Dense(self.features, name="penultimate")(x.reshape(x.shape[0], -1)))
        logits = {name: Dense(n, name=f"head_{name}")(feats) for name, n in HEADS.items()}
        return feats, logits


def _as_judge_input(images) -> np.ndarray:
    """uint8 [0, 255] or float [-1, 1] NHWC -> float32 [-1, 1], resized to 32x32 if needed."""
    images = np.asarray(images)
    if images.dtype == np.uint8:
        images = images.astype(np.float32) / 127.5 - 1.0
    images = np.clip(images.astype(np.float32), -1.0, 1.0)
    if images.shape[1:3] != (32, 32):
        images = np.asarray(jax.image.resize(images, (images.shape[0], 32, 32, images.shape[3]), "linear"))
    if images.shape[-1] == 1:
        images = np.repeat(images, 3, axis=-1)
    return images


def generate(size: int, seed: int, split: str = "all") -> tuple[np.ndarray, np.ndarray]:
    """(float32 images [size,32,32,3] in [-1, 1], int32 attrs [size, 5]) of the glyph set."""
    images, attrs = zip(*(glyphs.example(seed, i, split) for i in range(size)))
    return np.stack(images).astype(np.float32) / 127.5 - 1.0, np.asarray(attrs, np.int32)


class Judge:
    """A trained JudgeNet plus batched, jitted prediction and features."""

    def __init__(self, params, recipe: JudgeRecipe, metrics: Optional[dict] = None):
        self.params, self.recipe, self.metrics = params, recipe, metrics or {}
        self.net = JudgeNet(recipe.width, recipe.features)
        self._apply = jax.jit(lambda p, x: self.net.apply({"params": p}, x))

    def _run(self, images, batch: int = 256):
        x = _as_judge_input(images)
        feats, preds = [], {k: [] for k in HEADS}
        for i in range(0, len(x), batch):
            chunk = x[i:i + batch]
            pad = batch - len(chunk) if len(x) > batch else 0  # one compiled shape per call size
            f, logits = self._apply(self.params, np.pad(chunk, ((0, pad), (0, 0), (0, 0), (0, 0))))
            feats.append(np.asarray(f)[:len(chunk)])
            for k in HEADS:
                preds[k].append(np.asarray(jnp.argmax(logits[k], -1))[:len(chunk)])
        return np.concatenate(feats), {k: np.concatenate(v) for k, v in preds.items()}

    def predict(self, images) -> dict:
        """{attribute name: int32 [N] predicted value}."""
        return self._run(images)[1]

    def features(self, images) -> np.ndarray:
        """float32 [N, features] penultimate activations."""
        return self._run(images)[0]


def recipe_hash(recipe: JudgeRecipe) -> str:
    text = json.dumps({"dataset": glyphs.DATASET_VERSION, **dataclasses.asdict(recipe)}, sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def cache_dir() -> str:
    root = os.environ.get("JAXMODELS_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "jaxmodels")
    return os.path.join(root, "judge")


def train_judge(recipe: JudgeRecipe = JudgeRecipe(), log=print) -> Judge:
    """Trains a judge from scratch on generated images; metrics hold held-out accuracies."""
    start = time.time()
    x_train, a_train = generate(recipe.train_size, seed=1000 + recipe.seed)
    x_test, a_test = generate(recipe.test_size, seed=2000 + recipe.seed)
    net = JudgeNet(recipe.width, recipe.features)
    params = net.init(jax.random.key(recipe.seed), x_train[:1])["params"]
    schedule = optax.warmup_cosine_decay_schedule(0.0, recipe.lr, min(100, recipe.steps // 10 + 1),
                                                  recipe.steps, recipe.lr * 0.02)
    tx = optax.adamw(schedule, weight_decay=1e-4)
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state, x, a, rng):
        r_scale, r_noise = jax.random.split(rng)
        x = x + recipe.noise * jax.random.uniform(r_scale, (x.shape[0], 1, 1, 1)) * jax.random.normal(r_noise, x.shape)

        def loss_fn(p):
            _, logits = net.apply({"params": p}, x)
            return sum(optax.softmax_cross_entropy_with_integer_labels(logits[k], a[:, j]).mean()
                       for j, k in enumerate(HEADS))

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    rng = np.random.default_rng(recipe.seed)
    key = jax.random.key(recipe.seed + 1)
    for i in range(recipe.steps):
        idx = rng.integers(0, len(x_train), recipe.batch_size)
        params, opt_state, loss = step(params, opt_state, x_train[idx], a_train[idx], jax.random.fold_in(key, i))
        if log and (i + 1) % max(1, recipe.steps // 5) == 0:
            log(f"judge step {i + 1}/{recipe.steps} loss {float(loss):.4f}")
    judge = Judge(params, recipe)
    preds = judge.predict(x_test)
    metrics = {k: float(np.mean(preds[k] == a_test[:, j])) for j, k in enumerate(HEADS)}
    metrics["all_attributes"] = float(np.mean(np.all(np.stack([preds[k] == a_test[:, j]
                                                               for j, k in enumerate(HEADS)]), 0)))
    metrics["train_seconds"] = time.time() - start
    judge.metrics = metrics
    if log:
        log("judge held-out accuracy: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
    return judge


def load_judge(recipe: JudgeRecipe = JudgeRecipe(), directory: Optional[str] = None, log=print) -> Judge:
    """The cached judge for `recipe`, training (and caching) it on first use."""
    directory = directory or cache_dir()
    path = os.path.join(directory, f"judge-{recipe_hash(recipe)}.msgpack")
    net = JudgeNet(recipe.width, recipe.features)
    if os.path.isfile(path):
        template = jax.eval_shape(lambda: net.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))["params"])
        template = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), template)
        with open(path, "rb") as f:
            params = serialization.from_bytes(template, f.read())
        with open(path + ".json") as f:
            metrics = json.load(f)
        return Judge(params, recipe, metrics)
    if log:
        log(f"training the judge once, on first use ({recipe.steps} steps, a few minutes on a CPU); "
            f"it is cached in {path}")
    judge = train_judge(recipe, log=log)
    os.makedirs(directory, exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(serialization.to_bytes(jax.device_get(judge.params)))
    with open(path + ".json", "w") as f:
        json.dump(judge.metrics, f, indent=1)
    os.replace(tmp, path)  # atomic: a concurrent reader never sees half a file
    return judge


@functools.lru_cache(maxsize=2)
def default_judge() -> Judge:
    return load_judge()


def judge_accuracy(images, labels, judge: Optional[Judge] = None) -> float:
    """Fraction of images whose shape class the judge reads as `labels`."""
    judge = judge or default_judge()
    return float(np.mean(judge.predict(images)["shape"] == np.asarray(labels)))


def attribute_accuracy(images, attrs, judge: Optional[Judge] = None) -> dict:
    """Per-attribute accuracy against int attrs [N, 5] (glyphs.ATTRIBUTE_NAMES order), plus
    "mean" (over attributes) and "all_attributes" (every attribute right at once)."""
    judge = judge or default_judge()
    attrs = np.asarray(attrs)
    preds = judge.predict(images)
    hits = np.stack([preds[k] == attrs[:, j] for j, k in enumerate(HEADS)])
    out = {k: float(hits[j].mean()) for j, k in enumerate(HEADS)}
    out["mean"] = float(hits.mean())
    out["all_attributes"] = float(np.all(hits, 0).mean())
    return out


def frechet_from_features(f1: np.ndarray, f2: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to two feature sets [N, D] (float64)."""
    f1, f2 = np.asarray(f1, np.float64), np.asarray(f2, np.float64)
    mu1, mu2 = f1.mean(0), f2.mean(0)
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    # tr sqrt(S1 S2) = tr sqrt(S1^1/2 S2 S1^1/2), whose argument is symmetric PSD: use eigh.
    w, v = np.linalg.eigh(s1)
    s1_half = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    cross = np.linalg.eigvalsh(s1_half @ s2 @ s1_half)
    trace_sqrt = np.sqrt(np.clip(cross, 0, None)).sum()
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * trace_sqrt)


def frechet_distance(real, fake, judge: Optional[Judge] = None) -> float:
    """Frechet distance of two image sets in the judge's penultimate feature space."""
    judge = judge or default_judge()
    return frechet_from_features(judge.features(real), judge.features(fake))
