"""task.carry_state through the trainer: consecutive windows per row, the carried state in
the step (micro-batches included) and in the checkpoint, exact resume after kill -9."""
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from jaxmodels.config import ConfigError, load_config
from jaxmodels.data.text import StreamSource
from jaxmodels.tasks import build_task
from jaxmodels.train.build import fresh_state, make_setup
from jaxmodels.train.checkpoint import Checkpointer, load_params, restore_newest
from jaxmodels.train.loop import train
from jaxmodels.train.step import make_train_step
from tests.train.test_resume_lm import KILL_AT_15, _losses
from tests.train.util import ROOT, bit_identical, max_abs_diff

SPEC = os.path.join(ROOT, "configs", "rwkv7_l12_d768.py") + ":smoke"
CARRY = ["task.carry_state=True", "data.max_bytes=20000", "train.eval_every=0", "model.remat=nothing_saveable"]


def test_stream_rows_read_consecutive_windows():
    tokens = np.arange(1000)
    src = StreamSource(tokens, seq_len=8, rows=4)
    for step in range(3):
        for row in range(4):
            now, nxt = src[step * 4 + row], src[(step + 1) * 4 + row]
            assert now["inputs"][-1] + 1 == nxt["inputs"][0]       # the next window of the same stream
            np.testing.assert_array_equal(now["targets"], now["inputs"] + 1)
    assert src[0]["inputs"][0] == 0 and src[1]["inputs"][0] == src.per_row
    # A stream that runs out starts over from its own beginning.
    assert src[src.windows * 4 + 2]["inputs"][0] == src[2]["inputs"][0]


def test_carry_needs_a_recurrent_family():
    spec = os.path.join(ROOT, "configs", "gpt_shakespeare_char.py") + ":smoke"
    with pytest.raises(ConfigError, match="recurrent model"):
        build_task(load_config(spec, ["task.carry_state=True"]))


def _two_steps(micro_batches):
    spec = os.path.join(ROOT, "configs", "mamba_130m.py") + ":smoke"
    cfg = load_config(spec, CARRY[:-1] + [f"train.micro_batches={micro_batches}"])
    task = build_task(cfg)
    setup = make_setup(task, cfg)
    step = jax.jit(make_train_step(task, setup.optimizer, setup.schedule, cfg.train, setup.trainable))
    state = fresh_state(task, cfg, setup)
    it = iter(task.dataset("train", int(cfg.train.batch_size), 0))
    losses = []
    for _ in range(2):
        state, metrics = step(state, next(it))
        losses.append(float(metrics["loss"]))
    return state, losses


def test_micro_batches_carry_each_row_in_place():
    one, losses_one = _two_steps(1)
    two, losses_two = _two_steps(2)
    np.testing.assert_allclose(losses_one, losses_two, rtol=1e-5)
    assert max_abs_diff(one.carry, two.carry) < 1e-5
    assert max_abs_diff(one.params, two.params) < 1e-5
    np.testing.assert_array_equal(one.carry["pos"], 2 * 32)
    assert float(np.abs(one.carry["state"]["ssm"]).max()) > 0  # a real state is carried


@pytest.mark.slow  # ~2.5 min on two loaded cores (two runs and a killed subprocess)
def test_exact_resume_after_kill_9_with_carried_state(tmp_path):
    straight, killed = str(tmp_path / "straight"), str(tmp_path / "killed")
    train(load_config(SPEC, CARRY), straight)
    proc = subprocess.run([sys.executable, "-c", KILL_AT_15, "--config", SPEC, "--workdir", killed,
                           *[f"--config.{o}" for o in CARRY], "--config.mesh.cpu_devices=1"],  # as in-process
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert Checkpointer(killed).all_steps() == [10]
    train(load_config(SPEC, CARRY), killed)
    assert _losses(killed) == _losses(straight) and len(_losses(straight)) >= 4
    assert bit_identical(load_params(straight)[1], load_params(killed)[1])
    # The checkpoint holds the state every row ended step 20 with.
    carry = restore_newest(killed)[2].carry
    np.testing.assert_array_equal(np.asarray(carry["pos"]), 20 * 32)
    assert bit_identical(carry, restore_newest(straight)[2].carry)


def test_turning_the_carry_on_for_a_run_is_refused_naming_the_field():
    from jaxmodels.train.checkpoint import (CheckpointMismatchError, check_compatible, config_to_json,
                                            model_signature, state_signature)

    def signatures(cfg):
        setup = make_setup(build_task(cfg), cfg)
        return model_signature(setup.abstract_params), state_signature(setup.abstract_state, setup.trainable)

    spec = os.path.join(ROOT, "configs", "rwkv4_169m.py") + ":smoke"
    old, new = load_config(spec), load_config(spec, ["task.carry_state=True"])
    sig, old_state = signatures(old)
    meta = {"config": config_to_json(old), "signature": sig, "state_signature": old_state}
    new_sig, new_state = signatures(new)
    assert new_sig == sig  # same params: the carried state is what differs
    with pytest.raises(CheckpointMismatchError, match="task.carry_state: False in the checkpoint, True now"):
        check_compatible(meta, new, new_sig, "runs/x", new_state)
