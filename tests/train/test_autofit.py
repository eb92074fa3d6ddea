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
    assert ps[0].values == {"train.micro_batches": 1, "model.remat": "none"}
    assert [p.cost for p in ps] == sorted(p.cost for p in ps)
    assert len(ps) == 4 * 3  # micro-batches 1, 2, 4, 8 x three remat policies
    assert ps[-1].values == {"train.micro_batches": 8, "model.remat": "nothing_saveable"}


def test_search_returns_the_cheapest_plan_that_fits():
    """A fake estimate: memory falls with micro-batches and remat (100/k - 10 x remat level
    GiB, 16 GiB budget). The search returns the cheapest plan that fits."""
    saved = {"none": 0, "dots_with_no_batch_dims_saveable": 1, "nothing_saveable": 2}
    compiled = []

    def fake(c):
        k, r = int(c.train.micro_batches), c.model.remat
        compiled.append((k, r))
        total = int((100 / k - 10 * saved[r]) * GiB)
        from jaxmodels.train.memory import MemoryReport
        return MemoryReport("cpu", "fake", 0, 0, 0, 0, total, 0, total, int(16 * GiB))

    cfg = toy_cfg(train__batch_size=8)
    result = autofit.search(cfg, fake)
    fitting = [p for p in autofit.plans(cfg)
               if 100 / p.values["train.micro_batches"] - 10 * saved[p.values["model.remat"]] <= 16]
    cheapest = min(fitting, key=lambda p: p.cost)
    assert result.plan.values == cheapest.values == {"train.micro_batches": 4,
                                                     "model.remat": "dots_with_no_batch_dims_saveable"}
    assert result.report.fits and len(set(compiled)) == len(compiled)
    # Compiled in cost order, every plan cheaper than the answer (each over the budget).
    order = [(p.values["train.micro_batches"], p.values["model.remat"]) for p in autofit.plans(cfg)]
    assert compiled == order[:len(compiled)] and compiled[-1] == (4, "dots_with_no_batch_dims_saveable")
    compiled.clear()
    capped = autofit.search(cfg, fake, max_compiles=3)
    assert capped.plan is None and len(compiled) == 3 and capped.untried == len(order) - 3
    assert "left untried" in capped.summary()
    for k, r in compiled[:-1]:  # every compiled plan before the answer was over
        assert 100 / k - 10 * saved[r] > 16


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


def test_no_plan_fits_is_refused():
    over = lambda c: autofit.MemoryReport("cpu", "fake", 0, 0, 0, 0, 0, 0, 2 * GiB, GiB)  # noqa: E731
    with pytest.raises(MemoryBudgetError, match="no plan"):
        autofit.fit_config(toy_cfg(train__batch_size=2), over)


def test_launch_memory_fit(capsys):
    from launch.memory import main
    assert main(["--config", TOY_CONFIG, "--fit", "--config.train.batch_size=2"]) == 0
    out = capsys.readouterr().out
    assert "plan (relative step time x1.00" in out and "--config.train.micro_batches=1" in out
