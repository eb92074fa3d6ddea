"""Defect 3: bytes changed in place inside a checkpoint's data file (size unchanged) restored
without a word and the run went NaN later. Now every saved array (and the meta, and the data
position) carries a CRC32 checked at restore: a mismatch is damage -> the older checkpoint."""
import json
import os
import random
import shutil

import pytest

from jaxmodels.train.checkpoint import checkpoint_dir, load_params
from jaxmodels.train.loop import train
from tests.reliability.damage import flip_bytes, largest_file
from tests.train.util import bit_identical, toy_cfg

STEPS = 30


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("straight"))
    train(toy_cfg("ema", train__steps=STEPS), workdir)
    return workdir


def _copy(straight, tmp_path):
    workdir = str(tmp_path / "run")
    shutil.copytree(straight, workdir)
    return workdir


def test_bytes_flipped_in_a_data_file_are_detected(straight, tmp_path):
    workdir = _copy(straight, tmp_path)
    path = largest_file(os.path.join(checkpoint_dir(workdir), "30", "state"))
    size = os.path.getsize(path)
    flip_bytes(path, 64, random.Random(1))
    assert os.path.getsize(path) == size
    with pytest.warns(RuntimeWarning, match="checkpoint 30 .* damaged"):
        _, params = load_params(workdir, use_ema=False)
    # fell back to step 20 and resuming redoes 21..30 exactly
    with pytest.warns(RuntimeWarning, match="checkpoint 30 .* damaged"):
        train(toy_cfg("ema", train__steps=STEPS), workdir)
    assert bit_identical(load_params(workdir)[1], load_params(straight)[1])


def test_meta_edited_to_other_valid_json_is_detected(straight, tmp_path):
    workdir = _copy(straight, tmp_path)
    meta_dir = os.path.join(checkpoint_dir(workdir), "30", "meta")
    path = largest_file(meta_dir)
    with open(path) as f:
        meta = json.load(f)
    meta["config"]["optim"]["lr"] = 0.5  # still valid JSON, silently another run
    with open(path, "w") as f:
        json.dump(meta, f)
    with pytest.warns(RuntimeWarning, match="checkpoint 30 .* damaged.*checksum"):
        load_params(workdir)
