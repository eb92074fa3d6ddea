"""memory.auto_fit / launch.memory --fit: the fastest plan that fits a (faked) budget, and
the trainer runs it."""
import json
import os

import pytest

from jaxmodels.budget import GiB
from jaxmodels.train import autofit
from jaxmodels.train.loop import train
from jaxmodels.train.memory import MemoryBudgetError, estimate
from tests.train.util import TOY_CONFIG, toy_cfg


def test_plans_are_ordered_fastest_first():
    cfg = toy_cfg(train__batch_size=8)
    ps = autofit.plans(cfg)
    assert ps[0].values == {"train.micro_batches": 1, "model.remat": "none", "optim.kind": "adamw"}
    assert [p.cost for p in ps] == sorted(p.cost for p in ps)
    assert len(ps) == 4 * 3 * 2  # micro-batches 1, 2, 4, 8 x three remat policies x f32 / 8-bit state
    assert ps[-1].values == {"train.micro_batches": 8, "model.remat": "nothing_saveable", "optim.kind": "adamw8bit"}
    # 8-bit state comes after two micro-batches (f32 wins the near-tie) and before any remat.
    firsts = [tuple(p.values.values()) for p in ps[:3]]
    assert firsts == [(1, "none", "adamw"), (2, "none", "adamw"), (1, "none", "adamw8bit")]
    # A config that already chose its state format keeps it: no optim lever.
    for kind in ("adamw8bit", "adafactor"):
        assert all(p.values.keys() == {"train.micro_batches", "model.remat"}
                   for p in autofit.plans(toy_cfg(train__batch_size=8, optim__kind=kind)))


def test_search_returns_the_cheapest_plan_that_fits():
    """A fake estimate: memory falls with micro-batches, remat and 8-bit state (100/k - 10 x
    remat level - 12 for 8-bit GiB, 16 GiB budget). The search returns the cheapest plan that
    fits: here four micro-batches with 8-bit state (x 1.22) beat four with remat (x 1.27)."""
    saved = {"none": 0, "dots_with_no_batch_dims_saveable": 1, "nothing_saveable": 2}
    compiled = []

    def gib(k, r, kind):
        return 100 / k - 10 * saved[r] - 12 * (kind == "adamw8bit")

    def fake(c):
        key = (int(c.train.micro_batches), c.model.remat, c.optim.kind)
        compiled.append(key)
        total = int(gib(*key) * GiB)
        from jaxmodels.train.memory import MemoryReport
        return MemoryReport("cpu", "fake", 0, 0, 0, 0, total, 0, total, int(16 * GiB))

    cfg = toy_cfg(train__batch_size=8)
    result = autofit.search(cfg, fake)
    fitting = [p for p in autofit.plans(cfg) if gib(*p.values.values()) <= 16]
    cheapest = min(fitting, key=lambda p: p.cost)
    assert result.plan.values == cheapest.values == {"train.micro_batches": 4, "model.remat": "none",
                                                     "optim.kind": "adamw8bit"}
    assert result.report.fits and len(set(compiled)) == len(compiled)
    # Compiled in cost order, every plan cheaper than the answer (each over the budget).
    order = [tuple(p.values.values()) for p in autofit.plans(cfg)]
    assert compiled == order[:len(compiled)] and compiled[-1] == (4, "none", "adamw8bit")
    compiled.clear()
    capped = autofit.search(cfg, fake, max_compiles=3)
    assert capped.plan is None and len(compiled) == 3 and capped.untried == len(order) - 3
    assert "left untried" in capped.summary()
    for key in compiled[:-1]:  # every compiled plan before the answer was over
        assert gib(*key) > 16


def test_auto_fit_picks_a_plan_that_fits_and_the_trainer_runs_it(tmp_path, capsys):
    base = toy_cfg(train__batch_size=8, train__steps=4, train__eval_every=0, train__checkpoint_every=4)
    full = estimate(base).total
    lean = estimate(toy_cfg(train__batch_size=8, train__micro_batches=2)).total
    assert lean < full
    budget = (lean + full) / 2 / GiB  # the config as given is over; two micro-batches fit
    cfg = toy_cfg(train__batch_size=8, train__steps=4, train__eval_every=0, train__checkpoint_every=4,
                  memory__auto_fit=True, memory__check=True, memory__budget_gb=budget)
    train(cfg, str(tmp_path))
    out = capsys.readouterr().out
    assert "plan (relative step time" in out
    # The run kept the chosen plan (saved in the checkpoint's config) and trained 4 steps.
    with open(os.path.join(tmp_path, "metrics.jsonl")) as f:
        assert max(json.loads(line)["step"] for line in f) == 4
    from jaxmodels.train.checkpoint import newest_meta
    saved = newest_meta(str(tmp_path))[1]["config"]
    chosen = (saved["train"]["micro_batches"], saved["model"]["remat"])
    assert chosen != (1, "none")
    line = next(x for x in out.splitlines() if x.startswith("plan ("))
    assert float(line.split("estimate ")[1].split(" GiB")[0]) <= budget
    assert f"--config.train.micro_batches={chosen[0]}" in line and f"--config.model.remat={chosen[1]}" in line


@pytest.mark.slow  # ~17 s; the plan counting test covers the 8-bit choice by default
def test_only_the_8bit_plan_fits_and_the_trainer_runs_it(tmp_path, capsys):
    """One example per batch (no accumulation to try) and a model whose Adam moments outweigh
    its activations: under a budget between the 8-bit plan and the leanest f32-state plan
    (full remat), auto-fit picks 8-bit AdamW, prints it, and the run trains with it."""
    model = dict(train__batch_size=1, model__width=256, model__vocab=512)
    leanest_f32 = estimate(toy_cfg(model__remat="nothing_saveable", **model)).total  # (measured: as much as "none")
    eight_bit = estimate(toy_cfg(optim__kind="adamw8bit", **model)).total
    assert eight_bit < leanest_f32
    budget = (eight_bit + leanest_f32) / 2 / GiB
    cfg = toy_cfg(train__steps=3, train__eval_every=0, train__checkpoint_every=3, memory__auto_fit=True,
                  memory__check=True, memory__budget_gb=budget, **model)
    train(cfg, str(tmp_path))
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("plan ("))
    assert "--config.optim.kind=adamw8bit" in line and "--config.model.remat=none" in line, out
    from jaxmodels.train.checkpoint import newest_meta
    assert newest_meta(str(tmp_path))[1]["config"]["optim"]["kind"] == "adamw8bit"
    with open(os.path.join(tmp_path, "metrics.jsonl")) as f:
        assert max(json.loads(line)["step"] for line in f) == 3


def test_no_plan_fits_is_refused():
    over = lambda c: autofit.MemoryReport("cpu", "fake", 0, 0, 0, 0, 0, 0, 2 * GiB, GiB)  # noqa: E731
    with pytest.raises(MemoryBudgetError, match="no plan"):
        autofit.fit_config(toy_cfg(train__batch_size=2), over)


def test_launch_memory_fit(capsys):
    from launch.memory import main
    assert main(["--config", TOY_CONFIG, "--fit", "--config.train.batch_size=2"]) == 0
    out = capsys.readouterr().out
    assert "plan (relative step time x1.00" in out and "--config.train.micro_batches=1" in out
