"""Defect 7: launch.generate / sample / evaluate read the newest checkpoint's meta without
the trainer's fallback: a damaged newest meta crashed them (UnicodeDecodeError, KeyError).
They share load_params -> restore_newest, which falls back exactly like a resuming run."""
import json
import os
import shutil

import pytest

from jaxmodels.config import load_config
from jaxmodels.train.checkpoint import checkpoint_dir, load_params
from jaxmodels.train.loop import train
from tests.reliability.damage import largest_file
from tests.train.util import ROOT, bit_identical, toy_cfg


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("toy"))
    train(toy_cfg(train__steps=20), workdir)
    return workdir


def _meta_file(workdir, step):
    return largest_file(os.path.join(checkpoint_dir(workdir), str(step), "meta"))


@pytest.mark.parametrize("how", ["garbage", "no_config", "removed"])
def test_load_params_falls_back_past_a_damaged_meta(toy_run, tmp_path, how, caplog):
    workdir = str(tmp_path / "run")
    shutil.copytree(toy_run, workdir)
    reference = load_params(toy_run, step=10)[1]
    path = _meta_file(workdir, 20)
    if how == "garbage":
        with open(path, "wb") as f:
            f.write(b"\xff\xfe\x00garbage" * 10)
    elif how == "no_config":
        with open(path, "w") as f:
            json.dump({"signature": {}}, f)
    else:
        os.remove(path)
    with pytest.warns(RuntimeWarning, match="checkpoint 20 .* damaged") as caught:
        _, params = load_params(workdir)
    assert bit_identical(params, reference)
    # reported once (the meta probe and the restore both met it), as one warning and one log line
    assert len([w for w in caught if "damaged" in str(w.message)]) == 1
    assert len([r for r in caplog.records if "is damaged" in r.getMessage()]) == 1


def test_launch_generate_uses_the_fallback(tmp_path, capsys):
    workdir = str(tmp_path / "gpt")
    train(load_config(os.path.join(ROOT, "configs", "gpt_shakespeare_char.py") + ":smoke",
                      ["data.max_bytes=20000", "train.steps=10", "train.checkpoint_every=5", "train.eval_every=0"]),
          workdir)
    with open(_meta_file(workdir, 10), "wb") as f:
        f.write(b"\xff" * 64)
    capsys.readouterr()  # the training run's own progress lines
    from launch.generate import main
    with pytest.warns(RuntimeWarning, match="checkpoint 10 .* damaged"):
        assert main(["--workdir", workdir, "--prompt", "ab", "--max_new_tokens", "5", "--greedy"]) == 0
    assert capsys.readouterr().out.startswith("ab")
