"""Defect 10: bad input gets one clear line naming the fix, not a traceback or a NaN.
Config values no run can use, resuming past train.steps, token ids past the vocabulary, a
corrupt image, launch.convert errors, a missing key in an HF config.json, a failed (full
disk) save, and memory advice."""
import errno
import json
import os
import shutil

import numpy as np
import pytest

from jaxmodels.config import ConfigError, load_config
from jaxmodels.train.checkpoint import checkpoint_dir, load_params
from jaxmodels.train.loop import train
from tests.reliability.disk import small_disk
from tests.reliability.images import make_folder
from tests.train.util import ROOT, toy_cfg

GPT = os.path.join(ROOT, "configs", "gpt_shakespeare_char.py") + ":smoke"


@pytest.mark.parametrize("override, message", [
    ("train.steps=0", "train.steps=0 must be >= 1"),
    ("train.steps=-5", "train.steps=-5 must be >= 1"),
    ("data.seq_len=0", "data.seq_len=0 must be >= 1"),
    ("model.dropout=1.0", "model.dropout=1.0 must be < 1"),
    ("model.n_layer=0", "model.n_layer=0 must be >= 1"),
])
def test_values_no_run_can_use_are_refused_at_load(override, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        load_config(GPT, [override])


def test_resuming_with_steps_below_the_checkpoint_says_so(tmp_path):
    workdir = str(tmp_path / "run")
    train(toy_cfg(train__steps=20, train__eval_every=0), workdir)
    with pytest.raises(ConfigError, match="at step 20, past train.steps=10.*--config.train.steps=20"):
        train(toy_cfg(train__steps=10, train__eval_every=0), workdir)


def test_token_ids_past_the_vocab_name_the_file(tmp_path):
    path = str(tmp_path / "tokens.bin")
    tokens = np.random.default_rng(0).integers(0, 256, 20000).astype(np.uint16)
    tokens[12345] = 300  # one id past vocab_size=256
    tokens.tofile(path)
    cfg = load_config(GPT, ["data.source=tokens", f"data.path={path}", "train.steps=2"])
    with pytest.raises(ConfigError, match=f"token file {path} holds id 300 at position 12345.*vocab_size=256"):
        train(cfg, str(tmp_path / "run"))


def test_corrupt_images_are_skipped_with_a_warning_or_refused_by_option(tmp_path):
    from jaxmodels.data.images import FolderSource
    folder = str(tmp_path / "images")
    bad = make_folder(folder, classes=2, per_class=6, corrupt=2)
    source = FolderSource(folder, 16)
    with pytest.warns(RuntimeWarning, match="skipping unreadable image .*000.png"):
        items = [source[i] for i in range(len(source))]
    assert len(items) == 12 and all(item["image"].shape == (16, 16, 3) for item in items)
    with pytest.raises(ConfigError, match=f"cannot read image {bad[0]}.*bad_images=skip"):
        FolderSource(folder, 16, bad_images="error")[0]


def test_launch_convert_prints_one_line(tmp_path, capsys):
    from launch.convert import main
    assert main(["--hf", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "nowhere" in err


def test_missing_key_in_hf_config_names_key_and_file(tmp_path, capsys):
    folder = tmp_path / "gpt2"
    shutil.copytree(os.path.join(ROOT, "tests", "fixtures", "gpt2"), folder)
    cfg = json.loads((folder / "config.json").read_text())
    del cfg["n_embd"]
    (folder / "config.json").write_text(json.dumps(cfg))
    from jaxmodels.convert import from_hf
    with pytest.raises(ConfigError, match=f"{folder}/config.json has no 'n_embd' entry"):
        from_hf(str(folder))
    from launch.convert import main
    assert main(["--hf", str(folder), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'n_embd'" in err


def test_failed_save_removes_its_temporary_folder(tmp_path, monkeypatch):
    """A full disk during a save: a real small tmpfs when this process may mount one, else a
    simulated ENOSPC from the save (the cleanup path is the same)."""
    from jaxmodels.train.checkpoint import CheckpointSaveError
    mount = str(tmp_path / "disk")
    with small_disk(mount, 700) as real:
        workdir = os.path.join(mount, "run")
        if not real:
            import orbax.checkpoint as ocp
            save = ocp.CheckpointManager.save

            def full_disk(self, step, *a, **k):
                if step >= 40:
                    os.makedirs(os.path.join(checkpoint_dir(workdir), f"{step}.orbax-checkpoint-tmp-123"))
                    raise OSError(errno.ENOSPC, "No space left on device (simulated)")
                return save(self, step, *a, **k)
            monkeypatch.setattr(ocp.CheckpointManager, "save", full_disk)
        with pytest.raises(CheckpointSaveError, match="saving checkpoint .* failed .*removed its temporary "
                                                      "folder; kept checkpoints: .*Free disk space") as e:
            train(toy_cfg(train__steps=60, train__eval_every=0), workdir)
        failed = int(str(e.value).split("saving checkpoint ")[1].split()[0])
        assert [d for d in os.listdir(checkpoint_dir(workdir)) if "tmp" in d] == []
        kept = sorted(int(d) for d in os.listdir(checkpoint_dir(workdir)) if d.isdigit())
        assert kept and kept[-1] == failed - 10 and f"kept checkpoints: {kept}" in str(e.value)
        for step in kept:
            load_params(workdir, step=step)  # each kept checkpoint restores and verifies


def test_memory_advice_skips_settings_in_place_and_compiles_each(capsys):
    from jaxmodels.train.memory import advice, estimate
    cfg = toy_cfg(model__remat="nothing_saveable", train__batch_size=8, train__micro_batches=8)
    text = advice(cfg)
    assert "remat" not in text and "micro_batches" not in text  # already in place / no bigger one
    # a budget between the config's estimate and the halved seq_len's: only changes that fit
    cfg = toy_cfg(train__batch_size=64, model__seq_len=64)
    total = estimate(cfg).total / 2 ** 30
    cfg.memory.budget_gb = total * 0.97
    text = advice(cfg)
    assert "fits" in text and "still over" not in text
