"""Defect 6: LoRA/QLoRA checkpoints hold only the adapters; resuming with another train.seed
(another random base) or another init_from folder of the same shapes silently trained the
adapters on another base. Now the checkpoint records a fingerprint of the frozen base and a
mismatch is refused with a message."""
import os
import shutil

import pytest

from jaxmodels.config import load_config
from jaxmodels.train.checkpoint import CheckpointMismatchError, Checkpointer
from jaxmodels.train.loop import train
from tests.train.util import ROOT

SPEC = os.path.join(ROOT, "configs", "llama_lora_tiny.py:smoke")
OVERRIDES = ["train.steps=3", "train.checkpoint_every=3", "train.eval_every=0"]


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("lora"))
    train(load_config(SPEC, OVERRIDES), workdir)
    return workdir


def test_resume_on_another_base_is_refused(lora_run, tmp_path):
    workdir = str(tmp_path / "w")
    shutil.copytree(lora_run, workdir)
    with pytest.raises(CheckpointMismatchError, match="adapters trained on another frozen base.*train.seed=0"):
        train(load_config(SPEC, OVERRIDES[1:] + ["train.steps=6", "train.seed=1"]), workdir)
    assert Checkpointer(workdir).all_steps() == [3]
    assert not os.path.exists(os.path.join(workdir, "damaged_checkpoints"))


def test_resume_on_the_same_base_goes_on(lora_run, tmp_path):
    workdir = str(tmp_path / "w")
    shutil.copytree(lora_run, workdir)
    train(load_config(SPEC, OVERRIDES[1:] + ["train.steps=6"]), workdir)
    assert Checkpointer(workdir).all_steps()[-1] == 6


def test_fingerprint_sees_any_frozen_weight_and_ignores_adapters():
    """What init_from changes (frozen weights of the same shapes) moves the fingerprint; the
    adapters, which train, do not."""
    import numpy as np
    from jaxmodels.train.checkpoint import frozen_fingerprint
    params = {"base": {"w": np.arange(12, dtype=np.float32).reshape(3, 4)}, "lora": {"a": np.ones(4, np.float32)}}
    trainable = {"base": {"w": False}, "lora": {"a": True}}
    fp = frozen_fingerprint(params, trainable)
    other_base = {**params, "base": {"w": params["base"]["w"].copy()}}
    other_base["base"]["w"][2, 3] += 1e-6  # one weight of another checkpoint
    assert frozen_fingerprint(other_base, trainable) != fp
    trained = {**params, "lora": {"a": np.zeros(4, np.float32)}}
    assert frozen_fingerprint(trained, trainable) == fp
