"""Defect 8: changing train.ema_decay or optim.weight_decay on resume changes the optimizer /
EMA layout; every checkpoint was then reported damaged and the run ended in a traceback.
Now the layout is compared like the model shapes and the refusal names the field."""
import os
import shutil

import pytest

from jaxmodels.train.checkpoint import CheckpointMismatchError, Checkpointer
from jaxmodels.train.loop import train
from tests.train.util import toy_cfg


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("run"))
    train(toy_cfg(train__steps=10, train__eval_every=0), workdir)
    return workdir


@pytest.mark.parametrize("change, field", [
    (dict(train__ema_decay=0.9), "train.ema_decay: 0.0 in the checkpoint, 0.9 now"),
    (dict(optim__weight_decay=0.0), "optim.weight_decay: 0.1 in the checkpoint, 0.0 now"),
    (dict(train__skip_loss_z=3.0), "train.skip_loss_z: 0.0 in the checkpoint, 3.0 now"),
])
def test_other_optimizer_or_ema_layout_is_refused_naming_the_field(run, tmp_path, recwarn, change, field):
    workdir = str(tmp_path / "w")
    shutil.copytree(run, workdir)
    cfg = toy_cfg(train__steps=20, train__eval_every=0, **change)
    with pytest.raises(CheckpointMismatchError) as e:
        train(cfg, workdir)
    assert field in str(e.value) and "fresh --workdir" in str(e.value)
    assert not os.path.exists(os.path.join(workdir, "damaged_checkpoints"))  # not "damage"
    assert not [w for w in recwarn if "damaged" in str(w.message)]
    assert Checkpointer(workdir).all_steps() == [10]


def test_a_change_that_keeps_the_layout_resumes(run, tmp_path, recwarn):
    workdir = str(tmp_path / "w")
    shutil.copytree(run, workdir)
    train(toy_cfg(train__steps=20, train__eval_every=0, optim__weight_decay=0.05), workdir)
    assert Checkpointer(workdir).all_steps()[-1] == 20
    assert not [w for w in recwarn if "damaged" in str(w.message)]
