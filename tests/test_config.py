"""Config loading errors always say what is valid; launch.train turns them into exit 2."""
import os

import pytest

from jaxmodels.config import ConfigError, load_config
from jaxmodels.tasks import build_task

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOY = os.path.join(ROOT, "tests", "train", "toy_config.py")
SHAKESPEARE = os.path.join(ROOT, "configs", "gpt_shakespeare_char.py")


def test_overrides_are_typed():
    cfg = load_config(TOY, ["train.steps=7", "optim.lr=2e-3", "train.progress=true", "model.remat=dots_saveable",
                            "train.steps=1e2"])
    assert cfg.train.steps == 100 and isinstance(cfg.train.steps, int)
    assert cfg.optim.lr == 2e-3 and cfg.train.progress is True and cfg.model.remat == "dots_saveable"


def test_unknown_key_lists_valid_keys():
    with pytest.raises(ConfigError, match=r"train has no field 'stepz'; valid: .*micro_batches.*steps"):
        load_config(TOY, ["train.stepz=5"])
    with pytest.raises(ConfigError, match=r"<top level> has no field 'trian'; valid: .*optim.*train"):
        load_config(TOY, ["trian.steps=5"])


def test_wrong_type():
    with pytest.raises(ConfigError, match="expected an int, got 'many'"):
        load_config(TOY, ["train.steps=many"])
    with pytest.raises(ConfigError, match="expected a bool"):
        load_config(TOY, ["train.progress=maybe"])
    with pytest.raises(ConfigError, match="is a section"):
        load_config(TOY, ["train=3"])


def test_unknown_variant_and_missing_file():
    if os.path.exists(SHAKESPEARE):
        with pytest.raises(ConfigError, match=r"unknown variant 'tiny'.*valid: .*smoke"):
            load_config(SHAKESPEARE + ":tiny")
    with pytest.raises(ConfigError, match="not found"):
        load_config("configs/does_not_exist.py")


def test_unknown_task_lists_valid_names():
    cfg = load_config(TOY, ["task.name=classify"])
    with pytest.raises(ConfigError, match="unknown task.name 'classify'; valid: autoencoder, diffusion, lm"):
        build_task(cfg)
    cfg.task.name = "tests.train.toy_task:NoSuchTask"
    with pytest.raises(ConfigError, match="has no class 'NoSuchTask'"):
        build_task(cfg)


def test_launch_train_reports_config_errors_without_traceback(capsys, tmp_path):
    from launch.train import main
    assert main(["--config", TOY, "--workdir", str(tmp_path), "--config.train.stepz=3"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown config key --config.train.stepz") and "Traceback" not in err
    with pytest.raises(SystemExit) as e:
        main(["--config", TOY, "--bogus"])
    assert e.value.code == 2


def test_model_size_override_resizes_a_section_listing_every_field():
    # gpt2_124m lists every GPT field; the size switch must move the size-table fields and
    # keep the ones the config chose itself (vocab 50304, bf16).
    cfg = load_config(os.path.join(ROOT, "configs", "gpt2_124m.py"), ["model.size=gpt2-medium"])
    assert (cfg.model.n_layer, cfg.model.n_head, cfg.model.n_embd) == (24, 16, 1024)
    assert cfg.model.vocab_size == 50304 and cfg.model.dtype == "bfloat16"
    with pytest.raises(ConfigError, match="valid: gpt2, gpt2-medium"):
        load_config(os.path.join(ROOT, "configs", "gpt2_124m.py"), ["model.size=gpt5"])
