"""Auto-fit: the fastest plan that fits the memory budget (memory.auto_fit=True, or
`python -m launch.memory --fit`).

A plan sets four levers that trade speed for memory: train.micro_batches (gradient
accumulation), model.remat (what the backward pass recomputes), the optimizer-state format,
and the recurrent families' scan chunk (model.scan_chunk / model.chunk_size). All but the
state format change nothing the run computes (up to float rounding); 8-bit moments change
the updates slightly (BENCHMARKS.md, "Lean optimizer state": val loss x1.0004 of f32 AdamW's
on the char-GPT recipe). Plans are tried from the fastest down, each
compiled on abstract shapes (train/memory.estimate: nothing allocated), and the first that
fits the budget (the allocator's cap, jaxmodels/budget.py) wins.

"Fastest" is a cost model, not a measurement (measuring would need the device we are trying
not to overfill):
  remat      a training step is ~1/3 forward, 2/3 backward. "nothing_saveable" repeats the
             whole forward (x 4/3); "dots_with_no_batch_dims_saveable" keeps the matmul
             outputs and repeats the elementwise rest (x 1.1, an estimate).
  micro      each extra micro-batch re-reads every weight and runs smaller kernels: x (1 + 0.05
             per extra micro-batch), an estimate that makes 8 micro-batches cost about what
             full remat does.
  optimizer  leaner formats de/quantise the moments every step (OPTIMIZER_STATE_CHOICES):
             8-bit AdamW x 1.06, an estimate. Its extra work is elementwise (an 8-step
             binary search into the code and a gather back, per moment value) on top of a step
             whose cost is the model's matmuls; the char-GPT side-by-side run measured no
             slowdown on a CPU, but that model is small and its host loaded. The value puts
             8-bit just after two micro-batches (x 1.05) and before any remat (x 1.1), so
             f32 state wins every tie.
  chunk      no speed model: the configured chunk first, then twice, then half of it.
Every plan cheaper than the answer keeps more in memory on some lever, so each has to be
compiled to know it does not fit; `max_compiles` bounds the search.
"""
from __future__ import annotations

import dataclasses
import itertools
from typing import Callable, Optional

import ml_collections

from jaxmodels.config import ConfigError
from jaxmodels.train.memory import GiB, MemoryBudgetError, MemoryReport

# (policy, relative step time), from least to most recomputation (= least to most saved memory).
REMAT_CHOICES = (("none", 1.0), ("dots_with_no_batch_dims_saveable", 1.1), ("nothing_saveable", 4 / 3))
MICRO_BATCH_OVERHEAD = 0.05
# Optimizer-state formats: {(optim field, the value configured): [(value, relative step time)]}
# from the biggest state to the leanest; searched only when the config has that value (a
# config that asks for Adafactor or 8-bit state keeps it). f32 AdamW may become 8-bit AdamW,
# the same update rule (train/adam8bit.py); Adafactor is a different optimizer, never swapped in.
OPTIMIZER_STATE_CHOICES: dict[tuple[str, str], tuple[tuple[str, float], ...]] = {
    ("kind", "adamw"): (("adamw", 1.0), ("adamw8bit", 1.06)),
}
CHUNK_KEYS = ("scan_chunk", "chunk_size")


@dataclasses.dataclass(frozen=True)
class Lever:
    """One dimension of the search: a config key and its choices [(value, relative cost)]."""
    key: str
    choices: tuple


@dataclasses.dataclass
class Plan:
    values: dict          # {"train.micro_batches": 2, "model.remat": "none", ...}
    cost: float           # relative step time under the cost model
    levels: dict          # {key: index into the lever's choices}

    @property
    def overrides(self) -> list[str]:
        return [f"{k}={v}" for k, v in self.values.items()]

    def flags(self) -> str:
        return " ".join(f"--config.{o}" for o in self.overrides)


def levers(cfg: ml_collections.ConfigDict) -> list[Lever]:
    """The levers this config has, each with its choices (costs from the module docstring)."""
    bs = int(cfg.train.batch_size)
    out = [Lever("train.micro_batches", tuple((k, 1.0 + MICRO_BATCH_OVERHEAD * (k - 1))
                                              for k in range(1, bs + 1) if bs % k == 0))]
    model = cfg.get("model") or {}
    if "remat" in model:
        out.append(Lever("model.remat", REMAT_CHOICES))
    optim = cfg.get("optim") or {}
    for (key, now), choices in OPTIMIZER_STATE_CHOICES.items():
        if optim.get(key, None) == now:
            out.append(Lever(f"optim.{key}", choices))
    for key in CHUNK_KEYS:
        if key in model and isinstance(model[key], int) and model[key] >= 1:
            now = int(model[key])
            sizes = [now] + [c for c in (2 * now, now // 2) if c >= 1 and c != now]
            out.append(Lever(f"model.{key}", tuple((c, 1.0 + 0.01 * i) for i, c in enumerate(sizes))))
    return out


def plans(cfg: ml_collections.ConfigDict) -> list[Plan]:
    """Every combination of the levers, fastest first (ties: less memory saving first)."""
    ls = levers(cfg)
    out = []
    for combo in itertools.product(*(range(len(lv.choices)) for lv in ls)):
        cost = 1.0
        for lv, i in zip(ls, combo):
            cost *= lv.choices[i][1]
        out.append(Plan({lv.key: lv.choices[i][0] for lv, i in zip(ls, combo)}, cost,
                        {lv.key: i for lv, i in zip(ls, combo)}))
    out.sort(key=lambda p: (round(p.cost, 9), tuple(p.levels.values())))
    return out


def with_plan(cfg: ml_collections.ConfigDict, plan: Plan) -> ml_collections.ConfigDict:
    """A copy of cfg with the plan's values set."""
    from jaxmodels.config import apply_overrides

    out = ml_collections.ConfigDict(cfg.to_dict())
    apply_overrides(out, plan.overrides)
    return out


@dataclasses.dataclass
class FitResult:
    plan: Optional[Plan]
    report: Optional[MemoryReport]
    tried: list          # [(plan, report or None for an invalid plan)], in search order
    untried: int         # plans left when max_compiles ran out

    def summary(self) -> str:
        budget = next((r.budget for _, r in self.tried if r is not None), 0)
        lines = [f"auto-fit: {len(self.tried)} plan(s) compiled, budget {budget / GiB:.2f} GiB"]
        lines += [tried_line(plan, report) for plan, report in self.tried]
        if self.plan is None and self.untried:
            lines.append(f"none fits so far; {self.untried} slower plan(s) left untried (max_compiles)")
        if self.plan is None:
            lines.append("no plan fits: lower data.seq_len / the model size, or raise memory.budget_gb")
        else:
            lines.append(f"plan (relative step time x{self.plan.cost:.2f}, estimate "
                         f"{self.report.total / GiB:.2f} GiB): {self.plan.flags()}")
        return "\n".join(lines)


def tried_line(plan: Plan, report: Optional[MemoryReport]) -> str:
    what = "invalid" if report is None else f"{report.total / GiB:8.2f} GiB {'fits' if report.fits else 'over'}"
    return f"  x{plan.cost:5.2f}  {what:<18} {' '.join(plan.overrides)}"


def search(cfg: ml_collections.ConfigDict, estimate: Optional[Callable] = None,
           max_compiles: int = 32, log: Optional[Callable[[str], None]] = None) -> FitResult:
    """Compiles plans fastest-first until one fits; estimate(cfg) -> MemoryReport (default:
    train/memory.estimate), replaceable in tests. log: called with a line per compiled plan
    (a big model's compile takes a while; this shows the search moving)."""
    if estimate is None:
        from jaxmodels.train.memory import estimate
    candidates = plans(cfg)
    tried = []
    for plan in candidates[:max_compiles]:
        try:
            report = estimate(with_plan(cfg, plan))
        except ConfigError:
            tried.append((plan, None))  # e.g. a chunk the model refuses
            continue
        tried.append((plan, report))
        if log is not None:
            log(tried_line(plan, report))
        if report.fits:
            return FitResult(plan, report, tried, 0)
    return FitResult(None, None, tried, len(candidates) - len(tried))


def fit_config(cfg: ml_collections.ConfigDict, estimate: Optional[Callable] = None) -> ml_collections.ConfigDict:
    """cfg with the fastest plan that fits (printed), for the trainer; raises
    MemoryBudgetError naming what to change when none does."""
    result = search(cfg, estimate)
    print(result.summary(), flush=True)
    if result.plan is None:
        raise MemoryBudgetError(f"memory.auto_fit found no plan within memory.budget_gb={cfg.memory.budget_gb}; "
                                "lower data.seq_len or the model size, or raise memory.budget_gb")
    return with_plan(cfg, result.plan)
