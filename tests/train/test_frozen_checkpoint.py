"""LoRA runs checkpoint only what trains: the frozen base is rebuilt (seed / init_from) on
resume, and the resumed run is still bit-identical to an uninterrupted one."""
import os
import shutil

import jax
import orbax.checkpoint as ocp

from jaxmodels.config import load_config
from jaxmodels.train.checkpoint import checkpoint_dir, load_params
from jaxmodels.train.loop import train
from tests.train.util import ROOT, bit_identical

SPEC = os.path.join(ROOT, "configs", "llama_lora_tiny.py:smoke")
OVERRIDES = ["train.steps=6", "train.checkpoint_every=3", "train.eval_every=0", "train.ema_decay=0.9"]


def _saved_param_paths(workdir: str, step: int) -> list[str]:
    meta = ocp.StandardCheckpointer().metadata(os.path.join(checkpoint_dir(workdir), str(step), "state"))
    tree = meta.item_metadata.tree if hasattr(meta, "item_metadata") else meta.tree
    flat = jax.tree_util.tree_flatten_with_path(tree["params"])[0]
    return [jax.tree_util.keystr(p, simple=True, separator="/") for p, _ in flat]


def test_lora_checkpoint_holds_adapters_only_and_resumes_exactly(tmp_path):
    straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
    train(load_config(SPEC, OVERRIDES), straight)
    saved = _saved_param_paths(straight, 6)
    assert saved and all("lora" in p for p in saved), saved

    train(load_config(SPEC, OVERRIDES), resumed)
    shutil.rmtree(os.path.join(checkpoint_dir(resumed), "6"))  # as if killed after step 3's save
    train(load_config(SPEC, OVERRIDES), resumed)               # resumes at 3, rebuilds the base
    for use_ema in (False, True):
        a, b = load_params(straight, use_ema=use_ema)[1], load_params(resumed, use_ema=use_ema)[1]
        assert bit_identical(a, b)
