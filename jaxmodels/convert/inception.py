"""Weights of the FID InceptionV3 (models/inception.py) from pytorch-fid's checkpoint.

pytorch-fid's weights (pt_inception-2015-12-05-6726825d.pth, from its GitHub releases) are
a PyTorch pickle. Convert them once to safetensors, which the rest reads without torch:

    python -m launch.convert_fid_inception --pth pt_inception-2015-12-05-6726825d.pth \\
        --out fid_inception.safetensors                    # needs torch, once

`load_fid_inception(path)` reads that file (torchvision names: Mixed_5b.branch1x1.conv.weight,
....bn.weight / bias / running_mean / running_var) and folds each batch norm into its conv.
"""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

from jaxmodels.config import ConfigError
from jaxmodels.models.inception import FIDInceptionV3

BN_EPS = 1e-3
WEIGHTS_URL = ("https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
               "pt_inception-2015-12-05-6726825d.pth")


def convert_pth(pth: str, out: str) -> int:
    """pytorch-fid's .pth -> safetensors (torch needed here only). Returns the tensor count."""
    try:
        import torch
    except ImportError:
        raise ConfigError("converting the .pth needs torch once (pip install torch); or convert it on "
                          "another machine and copy the .safetensors") from None
    from safetensors.numpy import save_file

    state = torch.load(pth, map_location="cpu", weights_only=True)
    save_file({k: np.ascontiguousarray(v.numpy()) for k, v in state.items()}, out)
    return len(state)


def params_from_state_dict(tensors, logits: bool = False) -> dict:
    """Flax params of FIDInceptionV3(logits) from {torchvision name: numpy array} (get(name) access)."""
    shapes = jax.eval_shape(lambda: FIDInceptionV3().init(jax.random.key(0), jnp.zeros((1, 75, 75, 3))))["params"]

    def fold(path: tuple, leaves: dict) -> dict:
        prefix = ".".join(path)
        try:
            w = np.asarray(tensors[f"{prefix}.conv.weight"], np.float64)
            gamma, beta, mean, var = (np.asarray(tensors[f"{prefix}.bn.{k}"], np.float64)
                                      for k in ("weight", "bias", "running_mean", "running_var"))
        except KeyError as e:
            raise ConfigError(f"the Inception weights have no tensor {e}: not pytorch-fid's FID Inception "
                              f"(convert {WEIGHTS_URL.rsplit('/', 1)[1]} with launch.convert_fid_inception)") from None
        scale = gamma / np.sqrt(var + BN_EPS)
        kernel = (w * scale[:, None, None, None]).transpose(2, 3, 1, 0)
        if kernel.shape != leaves["kernel"].shape:
            raise ConfigError(f"{prefix}.conv.weight has shape {w.shape}; the FID Inception needs "
                              f"{leaves['kernel'].shape[::-1]}")
        return {"kernel": jnp.asarray(kernel, jnp.float32), "bias": jnp.asarray(beta - mean * scale, jnp.float32)}

    def walk(tree: dict, path: tuple) -> dict:
        if "conv" in tree and "kernel" in tree["conv"]:
            return {"conv": fold(path, tree["conv"])}
        return {k: walk(v, path + (k,)) for k, v in tree.items()}

    params = walk(shapes, ())
    if logits:
        try:
            w, b = tensors["fc.weight"], tensors["fc.bias"]
        except KeyError:
            raise ConfigError("the Inception weights have no fc.weight / fc.bias (the 1008-way classifier the "
                              "Inception Score needs): convert pytorch-fid's full checkpoint "
                              f"{WEIGHTS_URL.rsplit('/', 1)[1]} with launch.convert_fid_inception") from None
        params["fc"] = {"kernel": jnp.asarray(np.asarray(w, np.float32).T), "bias": jnp.asarray(b, jnp.float32)}
    return params


class _SafetensorsFile:
    def __init__(self, path: str):
        from safetensors import safe_open

        self.handle = safe_open(path, framework="numpy")
        self.names = set(self.handle.keys())

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self.names:
            raise KeyError(name)
        return self.handle.get_tensor(name)


def load_fid_inception(path: str, logits: bool = False) -> tuple[FIDInceptionV3, dict]:
    """(model, params) from a converted .safetensors (or the .pth itself when torch is installed);
    logits=True: the model also returns the classifier logits (Inception Score)."""
    if not path or not os.path.isfile(path):
        raise ConfigError(f"FID needs pytorch-fid's Inception weights (got {path!r}): download {WEIGHTS_URL} "
                          f"where there is network, convert it once with `python -m launch.convert_fid_inception "
                          f"--pth <file> --out fid_inception.safetensors`, and pass "
                          f"--inception fid_inception.safetensors")
    if path.endswith((".pth", ".pt")):
        try:
            import torch
        except ImportError:
            raise ConfigError(f"{path} is a PyTorch pickle: convert it once with `python -m "
                              f"launch.convert_fid_inception --pth {path} --out fid_inception.safetensors` "
                              f"(needs torch) and pass the .safetensors") from None
        state = {k: v.numpy() for k, v in torch.load(path, map_location="cpu", weights_only=True).items()}
        return FIDInceptionV3(logits), params_from_state_dict(state, logits)
    return FIDInceptionV3(logits), params_from_state_dict(_SafetensorsFile(path), logits)
