"""A command that fails before anything is saved leaves no empty runs/ folder behind."""
import os

from launch.train import main as train_main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_failed_train_leaves_no_empty_workdir(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # no tinyshakespeare.txt here (the packaged copy is only the default)
    config = os.path.join(ROOT, "configs", "gpt_shakespeare_char.py")
    assert train_main(["--config", config, "--config.data.path=tinyshakespeare.txt",
                       "--config.memory.check=false"]) == 2
    err = capsys.readouterr().err
    assert "tinyshakespeare" in err and "../" not in err  # the fix, pointing inside the user's clone
    assert not os.path.exists(tmp_path / "runs" / "gpt_shakespeare_char")


def test_existing_workdir_is_kept_on_failure(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    keep = tmp_path / "mine"
    keep.mkdir()
    config = os.path.join(ROOT, "configs", "gpt_shakespeare_char.py")
    assert train_main(["--config", config, "--workdir", str(keep), "--config.data.path=tinyshakespeare.txt",
                       "--config.memory.check=false"]) == 2
    assert keep.is_dir()  # not ours to delete
