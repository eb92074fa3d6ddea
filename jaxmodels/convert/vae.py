"""Imports a diffusers AutoencoderKL folder (config.json + *.safetensors) into models/vae.py.

    model, params = load_vae("path/to/sd-vae-ft-mse")        # or a folder with vae/ inside

`save_diffusers` writes the reverse (a VAE trained by tasks/autoencoder.py as a diffusers
folder). Also reads our own `save_pretrained` folders (jaxmodels_model.json) whose model name is "vae".
PyTorch layouts: conv weights [O, I, kh, kw] -> [kh, kw, I, O]; linear [O, I] -> [I, O];
attention's to_q / to_k / to_v are concatenated into the fused qkv kernel (single head);
checkpoints from before diffusers 0.14 name them query / key / value / proj_attn.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re

import jax
import jax.numpy as jnp
import numpy as np

from jaxmodels.config import ConfigError
from jaxmodels.convert.safetensors_io import SafetensorsFolder
from jaxmodels.models import vae as vae_model

BLOCK_TYPES = {"down": "DownEncoderBlock2D", "up": "UpDecoderBlock2D"}
RES_NAMES = {"in_norm": "norm1", "in_conv": "conv1", "out_norm": "norm2", "out_conv": "conv2",
             "skip": "conv_shortcut"}
LEGACY_ATTN = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}


def config_from_diffusers(hf: dict) -> vae_model.Config:
    """models/vae.Config from an AutoencoderKL config.json dict."""
    if hf.get("_class_name", "AutoencoderKL") != "AutoencoderKL":
        raise ConfigError(f"config.json is a {hf.get('_class_name')!r}, not an AutoencoderKL folder")
    for kind, want in BLOCK_TYPES.items():
        types = set(hf.get(f"{kind}_block_types", [want]))
        if types != {want}:
            raise ConfigError(f"{kind}_block_types {sorted(types)} are not supported (only {want})")
    return vae_model.Config(
        in_channels=int(hf.get("in_channels", 3)), out_channels=int(hf.get("out_channels", 3)),
        block_out_channels=tuple(int(c) for c in hf.get("block_out_channels", (64,))),
        layers_per_block=int(hf.get("layers_per_block", 1)),
        latent_channels=int(hf.get("latent_channels", 4)),
        norm_num_groups=int(hf.get("norm_num_groups", 32)),
        scaling_factor=float(hf.get("scaling_factor", 0.18215)),
        shift_factor=float(hf.get("shift_factor") or 0.0),
        use_quant_conv=bool(hf.get("use_quant_conv", True)),
        use_post_quant_conv=bool(hf.get("use_post_quant_conv", True)),
        mid_block_add_attention=bool(hf.get("mid_block_add_attention", True)))


def _module_name(path: list[str]) -> str:
    """Our module path (without the leaf) -> the diffusers module name."""
    out = []
    for i, part in enumerate(path):
        if m := re.fullmatch(r"(down|up)_(\d+)_(\d+)", part):
            out.append(f"{m[1]}_blocks.{m[2]}.resnets.{m[3]}")
        elif m := re.fullmatch(r"(down|up)_(\d+)_(downsample|upsample)", part):
            out.append(f"{m[1]}_blocks.{m[2]}.{m[3]}rs.0.conv")
        elif part == "mid":
            out.append("mid_block")
        elif m := re.fullmatch(r"res_(\d)", part):
            out.append(f"resnets.{m[1]}")
        elif part == "attn" and path[i - 1] == "mid":
            out.append("attentions.0")
        elif part == "norm":
            out.append("group_norm")
        elif part == "proj":
            out.append("to_out.0")
        elif part == "norm_out":
            out.append("conv_norm_out")
        elif part in RES_NAMES and re.fullmatch(r"(down|up)_\d+_\d+|res_\d", path[i - 1]):
            out.append(RES_NAMES[part])
        elif part == "attn":   # the MultiHeadAttention inside the attention block
            continue
        else:
            out.append(part)
    return ".".join(out)


class _Reader:
    def __init__(self, folder: SafetensorsFolder, prefix: str):
        self.folder, self.prefix = folder, prefix

    def get(self, name: str) -> np.ndarray:
        key = self.prefix + name
        if key not in self.folder:
            for new, old in LEGACY_ATTN.items():
                if f".{new}." in key and key.replace(f".{new}.", f".{old}.") in self.folder:
                    return self.folder.get(key.replace(f".{new}.", f".{old}."))
            raise ConfigError(f"{self.folder.folder}: tensor {key!r} is missing; the folder does not match "
                              "its config.json (or is not an AutoencoderKL)")
        return self.folder.get(key)


def _convert_leaf(reader: _Reader, path: list[str], shape: tuple) -> np.ndarray:
    *mods, leaf = path
    module = _module_name(mods)
    suffix = "weight" if leaf in ("kernel", "scale") else "bias"
    if mods[-1] == "qkv":
        parts = [reader.get(f"{module[:-len('qkv')]}{n}.{suffix}") for n in ("to_q", "to_k", "to_v")]
        if leaf == "kernel":
            parts = [p.reshape(p.shape[0], p.shape[1]).T for p in parts]
        return np.concatenate(parts, axis=-1)
    array = reader.get(f"{module}.{suffix}")
    if leaf == "kernel":
        if len(shape) == 4:
            array = array.transpose(2, 3, 1, 0)
        else:
            array = array.reshape(array.shape[0], array.shape[1]).T
    return array


def params_from_folder(folder: str, cfg: vae_model.Config, prefix: str = "") -> dict:
    """Params of AutoencoderKL(cfg) read from a diffusers safetensors folder."""
    model = vae_model.AutoencoderKL(cfg)
    size = 2 * cfg.downsample_factor
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, size, size, cfg.in_channels)))
                            )["params"]
    # decode's parameters are created by a decode call: initialise both paths.
    dec = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 2, 2, cfg.latent_channels)),
                                            method=vae_model.AutoencoderKL.decode))["params"]
    shapes = {**shapes, **dec}
    reader = _Reader(SafetensorsFolder(folder), prefix)

    def convert(key_path, leaf):
        path = [k.key for k in key_path]
        array = _convert_leaf(reader, path, leaf.shape)
        if array.shape != leaf.shape:
            raise ConfigError(f"{folder}: {'/'.join(path)} has shape {array.shape}, the config says {leaf.shape}")
        return jnp.asarray(array, jnp.float32)

    return jax.tree_util.tree_map_with_path(convert, shapes)


def load_vae(path: str, dtype: str = "float32") -> tuple[vae_model.AutoencoderKL, dict]:
    """(AutoencoderKL module, f32 params) from a diffusers AutoencoderKL folder (or a folder
    holding vae/: a diffusers pipeline, or an autoencoder training run, whose evaluations
    export vae/), or from our own save_pretrained folder of a "vae"."""
    from jaxmodels.convert.pretrained import is_pretrained_dir, load_pretrained

    if not path or not os.path.isdir(path):
        raise ConfigError(f"VAE folder {path!r} does not exist: give a diffusers AutoencoderKL folder "
                          "(config.json + diffusion_pytorch_model.safetensors), e.g. stabilityai/sd-vae-ft-mse")
    if os.path.isdir(os.path.join(path, "checkpoints")) and not os.path.isdir(os.path.join(path, "vae")):
        raise ConfigError(f"{path} is a training run without an exported vae/ yet: it is written at each "
                          "evaluation of task 'autoencoder' (train until the first eval, or to the end)")
    if is_pretrained_dir(path):
        model_cfg, params = load_pretrained(path)
        if model_cfg.pop("name", None) != "vae":
            raise ConfigError(f"{path} holds a {model_cfg.get('name')!r} model, not a vae")
        model_cfg["dtype"] = dtype
        return vae_model.build(model_cfg), params
    if not os.path.isfile(os.path.join(path, "config.json")) and os.path.isdir(os.path.join(path, "vae")):
        path = os.path.join(path, "vae")
    from jaxmodels.convert import read_hf_config

    hf = dict(read_hf_config(path))
    cfg = dataclasses.replace(config_from_diffusers(hf), dtype=dtype)
    return vae_model.AutoencoderKL(cfg), params_from_folder(path, cfg)


def _tensors_of_leaf(path: list[str], array: np.ndarray) -> dict[str, np.ndarray]:
    """The inverse of _convert_leaf: one of our leaves -> its diffusers tensor(s), torch layout."""
    *mods, leaf = path
    module = _module_name(mods)
    suffix = "weight" if leaf in ("kernel", "scale") else "bias"
    if mods[-1] == "qkv":
        parts = np.split(array, 3, axis=-1)
        return {f"{module[:-len('qkv')]}{n}.{suffix}": (p.T if leaf == "kernel" else p)
                for n, p in zip(("to_q", "to_k", "to_v"), parts)}
    if leaf == "kernel":
        array = array.transpose(3, 2, 0, 1) if array.ndim == 4 else array.T
    return {f"{module}.{suffix}": array}


def save_diffusers(cfg: vae_model.Config, params, out_dir: str, sample_size: int = 256) -> None:
    """Writes AutoencoderKL(cfg) params as a diffusers folder (config.json +
    diffusion_pytorch_model.safetensors) that load_vae and diffusers' from_pretrained read.
    Each file is written to a temp name and renamed, so a reader never sees half a folder."""
    from safetensors.numpy import save_file

    tensors: dict[str, np.ndarray] = {}

    def collect(key_path, leaf):
        tensors.update(_tensors_of_leaf([k.key for k in key_path], np.asarray(leaf, np.float32)))

    jax.tree_util.tree_map_with_path(collect, params)
    levels = len(cfg.block_out_channels)
    config = {
        "_class_name": "AutoencoderKL", "act_fn": "silu",
        "in_channels": cfg.in_channels, "out_channels": cfg.out_channels,
        "down_block_types": [BLOCK_TYPES["down"]] * levels, "up_block_types": [BLOCK_TYPES["up"]] * levels,
        "block_out_channels": list(cfg.block_out_channels), "layers_per_block": cfg.layers_per_block,
        "latent_channels": cfg.latent_channels, "norm_num_groups": cfg.norm_num_groups,
        "sample_size": int(sample_size), "scaling_factor": float(cfg.scaling_factor),
        "shift_factor": float(cfg.shift_factor) if cfg.shift_factor else None,
        "use_quant_conv": cfg.use_quant_conv, "use_post_quant_conv": cfg.use_post_quant_conv,
        "mid_block_add_attention": cfg.mid_block_add_attention, "force_upcast": False,
    }
    os.makedirs(out_dir, exist_ok=True)
    weights = os.path.join(out_dir, "diffusion_pytorch_model.safetensors")
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, weights + ".tmp", metadata={"format": "pt"})
    os.replace(weights + ".tmp", weights)
    with open(os.path.join(out_dir, "config.json.tmp"), "w") as f:
        json.dump(config, f, indent=2)
    os.replace(os.path.join(out_dir, "config.json.tmp"), os.path.join(out_dir, "config.json"))
