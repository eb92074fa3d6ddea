"""Task registry: `task.name` in a config picks what "loss", "data" and "evaluate" mean.

"lm", "diffusion" and "autoencoder" (the VAE of latent diffusion) are the built-in tasks;
any "package.module:ClassName" also works, so tests and notebooks can train a task of their
own through the same trainer.
"""
from __future__ import annotations

import importlib

import ml_collections

from jaxmodels.config import ConfigError

TASKS = {
    "lm": "jaxmodels.tasks.lm:LMTask",
    "diffusion": "jaxmodels.tasks.diffusion:DiffusionTask",
    "autoencoder": "jaxmodels.tasks.autoencoder:AutoencoderTask",
}


def task_class(name: str):
    """The Task subclass registered as `name` (or named by a dotted "module:Class")."""
    target = TASKS.get(name, name)
    module_name, colon, class_name = target.partition(":")
    if not colon or not module_name or not class_name:
        raise ConfigError(f"unknown task.name {name!r}; valid: {', '.join(sorted(TASKS))} "
                          f"or a dotted 'package.module:ClassName'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigError(f"task.name {name!r}: cannot import {module_name!r} ({e})") from e
    if not hasattr(module, class_name):
        raise ConfigError(f"task.name {name!r}: module {module_name!r} has no class {class_name!r}")
    return getattr(module, class_name)


def build_task(cfg: ml_collections.ConfigDict):
    """Builds the task (and through it the model) described by the whole experiment config."""
    if "task" not in cfg or "name" not in cfg.task:
        raise ConfigError(f"config needs task.name; valid: {', '.join(sorted(TASKS))}")
    from jaxmodels.kernels import dispatch
    dispatch.configure(cfg.get("kernels", None))  # which implementation each hot op runs
    return task_class(cfg.task.name)(cfg)
