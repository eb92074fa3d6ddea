"""Frechet Inception Distance with the FID InceptionV3 (models/inception.py), as pytorch-fid.

FID = |mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)) over pool3 features (mean and unbiased
covariance, float64). tr((S1 S2)^(1/2)) is computed as the sum of square roots of the
eigenvalues of S1^(1/2) S2 S1^(1/2), a symmetric PSD matrix with the same eigenvalues, so no
complex parts or non-symmetric square roots arise (pytorch-fid uses scipy's sqrtm and drops
imaginary noise; the two agree to rounding).

Inception Score (Salimans et al. 2016) from the same network's 1008-way classifier:
IS = exp(E_x KL(p(y|x) || p(y))), p(y) the mean of p(y|x) over a split; the images are cut
into `splits` equal parts (10, as the original code and torch-fidelity) and the mean and
standard deviation over the parts are reported.

Reference sets: a folder of images (any size; read recursively), an .npz of statistics
("mu", "sigma": pytorch-fid --save-stats and ADM's reference batches), or an .npz of images
(ADM's "arr_0" uint8 [N, H, W, 3], or "images").
"""
from __future__ import annotations

import os
from typing import Iterable, Iterator, Optional

import numpy as np

from jaxmodels.config import ConfigError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


def statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean [D], unbiased covariance [D, D]) of features [N, D], float64."""
    features = np.asarray(features, np.float64)
    if len(features) < 2:
        raise ConfigError(f"FID needs at least 2 images per set, got {len(features)}")
    return features.mean(axis=0), np.cov(features, rowvar=False)


def _sqrt_psd(matrix: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """The Frechet distance between N(mu1, sigma1) and N(mu2, sigma2)."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ConfigError(f"FID statistics differ in size: {mu1.shape} vs {mu2.shape} (the reference was "
                          "computed with another network or layer)")
    root = _sqrt_psd(sigma1)
    eig = np.linalg.eigvalsh(root @ sigma2 @ root)
    tr_covmean = np.sum(np.sqrt(np.clip(eig, 0, None)))
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_covmean)


def image_files(folder: str) -> list[str]:
    files = sorted(os.path.join(root, f) for root, _, names in os.walk(folder) for f in names
                   if f.lower().endswith(IMAGE_SUFFIXES))
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {folder!r}")
    return files


def folder_batches(folder: str, batch_size: int) -> tuple[int, Iterator[np.ndarray]]:
    """(count, batches of uint8 [B, H, W, 3]); a batch ends early where the image size changes."""
    from PIL import Image

    files = image_files(folder)

    def gen():
        batch: list = []
        for path in files:
            with Image.open(path) as img:
                array = np.asarray(img.convert("RGB"), np.uint8)
            if batch and (len(batch) == batch_size or array.shape != batch[0].shape):
                yield np.stack(batch)
                batch = []
            batch.append(array)
        if batch:
            yield np.stack(batch)

    return len(files), gen()


def array_batches(images: np.ndarray, batch_size: int) -> tuple[int, Iterator[np.ndarray]]:
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ConfigError(f"FID images must be [N, H, W, 3] RGB, got shape {images.shape}")
    return len(images), (images[i:i + batch_size] for i in range(0, len(images), batch_size))


def inception_score(logits: np.ndarray, splits: int = 10) -> tuple[float, float]:
    """(mean, std) over `splits` equal parts of exp(mean KL(p(y|x) || p(y))), float64."""
    logits = np.asarray(logits, np.float64)
    if len(logits) < splits:
        raise ConfigError(f"the Inception Score needs at least --is-splits={splits} images; got {len(logits)}")
    logits = logits - logits.max(axis=1, keepdims=True)
    log_p = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    scores = []
    for part in np.array_split(log_p, splits):
        log_py = np.log(np.exp(part).mean(axis=0))
        scores.append(np.exp(np.mean(np.sum(np.exp(part) * (part - log_py), axis=1))))
    return float(np.mean(scores)), float(np.std(scores))


class FIDFeatures:
    """pool3 features of image batches, on the device, one compiled shape per image size
    (logits=True: the classifier's logits are kept too, in .last_logits)."""

    def __init__(self, inception_path: str, batch_size: int = 50, logits: bool = False):
        import jax

        from jaxmodels.convert.inception import load_fid_inception

        self.model, self.params = load_fid_inception(inception_path, logits=logits)
        self.batch_size = batch_size
        self.logits = logits
        self.last_logits: Optional[np.ndarray] = None
        self._apply = jax.jit(lambda p, x: self.model.apply({"params": p}, x))

    def __call__(self, count: int, batches: Iterable[np.ndarray], progress: bool = True,
                 desc: str = "fid") -> np.ndarray:
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=count, desc=desc, unit="img")
        out, logits = [], []
        for batch in batches:
            n = len(batch)
            if n < self.batch_size:   # pad: one compiled shape per image size
                batch = np.concatenate([batch, np.zeros((self.batch_size - n,) + batch.shape[1:], batch.dtype)])
            result = self._apply(self.params, np.asarray(batch, np.float32))
            if self.logits:
                result, batch_logits = result
                logits.append(np.asarray(batch_logits)[:n])
            out.append(np.asarray(result)[:n])
            if bar is not None:
                bar.update(n)
        if bar is not None:
            bar.close()
        self.last_logits = np.concatenate(logits) if self.logits else None
        return np.concatenate(out)


def reference_statistics(ref: str, features: Optional[FIDFeatures], progress: bool = True):
    """(mu, sigma) of a reference: a statistics .npz, an images .npz or an image folder."""
    if os.path.isdir(ref):
        return statistics(features(*folder_batches(ref, features.batch_size), progress=progress, desc="ref"))
    if not os.path.isfile(ref):
        raise ConfigError(f"--ref {ref!r} is neither an image folder nor an .npz")
    data = np.load(ref)
    if "mu" in data and "sigma" in data:
        return data["mu"], data["sigma"]
    for key in ("arr_0", "images"):
        if key in data:
            return statistics(features(*array_batches(data[key], features.batch_size), progress=progress,
                                       desc="ref"))
    raise ConfigError(f"{ref}: expected 'mu' + 'sigma' (statistics) or 'arr_0' / 'images' (uint8 images); "
                      f"has {sorted(data.files)}")


def fid_against(ref: str, inception: str, images: Optional[np.ndarray] = None, folder: str = "",
                batch_size: int = 50, progress: bool = True, is_splits: int = 0) -> dict:
    """FID of generated `images` (uint8 [N, H, W, 3]) or of an image `folder` against `ref`
    (ref "" skips the FID); is_splits > 0 adds their Inception Score (is, is_std) from the
    same pass through the network."""
    features = FIDFeatures(inception, batch_size, logits=is_splits > 0)
    if images is not None:
        count, batches = array_batches(images, batch_size)
    else:
        count, batches = folder_batches(folder, batch_size)
    feats = features(count, batches, progress=progress, desc="samples")
    sample_logits = features.last_logits  # before the reference pass replaces them
    out: dict = {}
    if ref:
        mu, sigma = statistics(feats)
        mu_ref, sigma_ref = reference_statistics(ref, features, progress)
        out["fid"] = frechet_distance(mu, sigma, mu_ref, sigma_ref)
    if is_splits > 0:
        out["is"], out["is_std"] = inception_score(sample_logits, is_splits)
    out["num"] = int(count)
    return out
