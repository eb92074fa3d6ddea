"""Will the train step fit? Compile it on abstract shapes (nothing allocated) and read XLA's
memory analysis: params, optimizer state, activations + temporaries, against memory.budget_gb.

The estimate is for the backend compiled for (a CPU compile approximates a GPU's: same
program, different fusion), which the report names.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import jax
import ml_collections
import numpy as np

from jaxmodels.config import ConfigError

PyTree = Any
GiB = 1024 ** 3
MiB = 1024 ** 2


class MemoryBudgetError(ConfigError):
    """The compiled train step needs more memory than memory.budget_gb."""


def tree_bytes(tree: PyTree) -> int:
    """Bytes of the leaves; of one device's shard for leaves that carry a sharding."""
    def one(x):
        sharding = getattr(x, "sharding", None)
        shape = sharding.shard_shape(tuple(x.shape)) if sharding is not None else x.shape
        return int(np.prod(shape)) * np.dtype(x.dtype).itemsize
    return int(sum(one(x) for x in jax.tree.leaves(tree)))


@dataclasses.dataclass
class MemoryReport:
    backend: str
    device_kind: str
    params: int
    optimizer: int
    ema: int
    batch: int
    temp: int          # activations kept for backward + XLA temporaries
    outputs: int       # outputs not aliased to (donated) inputs
    total: int
    budget: int
    devices: int = 1   # on a mesh every number is one device's share
    budget_note: str = ""  # why the budget is below memory.budget_gb (the allocator's cap)

    @property
    def fits(self) -> bool:
        return self.total <= self.budget

    def __str__(self) -> str:
        rows = [("params", self.params), ("optimizer state", self.optimizer), ("ema params", self.ema),
                ("batch", self.batch), ("activations + temp", self.temp),
                ("outputs (not donated)", self.outputs)]
        per = f", per device of {self.devices}" if self.devices > 1 else ""
        lines = [f"memory estimate (compiled for {self.backend}: {self.device_kind}{per})"]
        lines += [f"  {name:<24}{size / MiB:>12.1f} MiB" for name, size in rows if size]
        lines.append(f"  {'total':<24}{self.total / MiB:>12.1f} MiB  "
                     f"({self.total / GiB:.2f} of {self.budget / GiB:.2f} GiB budget{self.budget_note}"
                     f"{'' if self.fits else ': DOES NOT FIT'})")
        return "\n".join(lines)


def analyze(jitted_step: Callable, abstract_state, abstract_batch, budget_gb: float):
    """Lowers + compiles `jitted_step` on abstract args -> (MemoryReport, compiled executable).

    The executable is returned so the trainer runs it instead of compiling a second time.
    """
    compiled = jitted_step.lower(abstract_state, abstract_batch).compile()
    ma = compiled.memory_analysis()
    args = int(ma.argument_size_in_bytes)
    outputs = max(0, int(ma.output_size_in_bytes) - int(ma.alias_size_in_bytes))
    temp = int(ma.temp_size_in_bytes)
    device = jax.devices()[0]
    budget, note = budget_bytes(budget_gb, device)
    ema = tree_bytes(abstract_state.ema) if abstract_state.ema is not None else 0
    report = MemoryReport(
        backend=device.platform, device_kind=device.device_kind,
        params=tree_bytes(abstract_state.params), optimizer=tree_bytes(abstract_state.opt_state),
        ema=ema, batch=tree_bytes(abstract_batch), temp=temp, outputs=outputs,
        total=args + outputs + temp, budget=budget, budget_note=note, devices=_devices_of(abstract_state))
    return report, compiled


def _devices_of(abstract_state) -> int:
    """How many devices the state is laid out on (1 without a mesh)."""
    shardings = [getattr(x, "sharding", None) for x in jax.tree.leaves(abstract_state)]
    return max([len(s.device_set) for s in shardings if s is not None] or [1])


def budget_bytes(budget_gb: float, device=None) -> tuple[int, str]:
    """(bytes the step may use, note): memory.budget_gb lowered to what XLA's allocator is
    capped at (jaxmodels/budget.py; on a GPU also the limit the device itself reports), so
    the fit check and the allocator agree on one number."""
    from jaxmodels.budget import usable_budget_bytes

    given = int(float(budget_gb) * GiB)
    budget = usable_budget_bytes(budget_gb)
    stats = device.memory_stats() if device is not None and device.platform != "cpu" else None
    if stats and stats.get("bytes_limit"):
        budget = min(budget, int(stats["bytes_limit"]))
    note = "" if budget >= given else f", the allocator's cap (memory.budget_gb={float(budget_gb):g})"
    return budget, note


LENGTH_KEYS = ("seq_len", "block_size", "max_len", "context_len", "image_size", "resolution")


def candidate_changes(cfg: ml_collections.ConfigDict) -> list[tuple[str, str]]:
    """[(override "a.b=value", why)]: single changes that lower memory, none of them a value
    already in place."""
    out = []
    k, bs = int(cfg.train.micro_batches), int(cfg.train.batch_size)
    bigger = next((m for m in range(2 * k, bs + 1) if bs % m == 0), None)
    if bigger:
        out.append((f"train.micro_batches={bigger}", f"now {k}; activations scale with "
                    f"batch_size/micro_batches = {bs // k}"))
    for key in sorted(cfg.model.keys()):
        if "remat" in key and cfg.model[key] != "nothing_saveable":
            out.append((f"model.{key}=nothing_saveable", f"now {cfg.model[key]!r}; recompute "
                        f"activations in the backward pass"))
    for section in ("data", "model", "task"):
        for key in sorted(cfg[section].keys()) if section in cfg else ():
            value = cfg[section][key]
            if key in LENGTH_KEYS and isinstance(value, int) and not isinstance(value, bool) and value >= 2:
                out.append((f"{section}.{key}={value // 2}", f"now {value}"))
    return out


def _estimate_with(cfg: ml_collections.ConfigDict, override: str) -> Optional[MemoryReport]:
    """The memory estimate of cfg with one override applied (None: that config is invalid)."""
    from jaxmodels.config import apply_overrides, validate_config
    changed = ml_collections.ConfigDict(cfg.to_dict())
    try:
        apply_overrides(changed, [override])
        validate_config(changed)
        return estimate(changed)
    except Exception:  # noqa: BLE001  (e.g. seq_len no longer divides: not a suggestion)
        return None


def advice(cfg: ml_collections.ConfigDict, check: bool = True) -> str:
    """What to change when a config does not fit: the config's own knobs, never a value it
    already has. check: compile each candidate and list those that fit first, with their
    estimate (when none fits alone, the candidates are still listed with theirs)."""
    fits, over = [], []
    for override, why in candidate_changes(cfg):
        report = _estimate_with(cfg, override) if check else None
        if check and report is None:
            continue
        if report is None:
            over.append(f"--config.{override} ({why})")
        elif report.fits:
            fits.append(f"--config.{override} ({why}; estimate {report.total / GiB:.2f} GiB, fits)")
        else:
            over.append(f"--config.{override} ({why}; estimate {report.total / GiB:.2f} GiB, still over)")
    tips = fits or over
    if check and not fits and over:
        tips = tips + ["no single change fits: combine them"]
    tips.append("or raise --config.memory.budget_gb if the device really has more free memory")
    return "; ".join(tips)


def check_fits(report: MemoryReport, cfg: ml_collections.ConfigDict) -> None:
    """Raises MemoryBudgetError (with what to change) when the estimate exceeds the budget."""
    if not report.fits:
        raise MemoryBudgetError(f"the train step needs about {report.total / GiB:.2f} GiB but "
                                f"{report.budget / GiB:.2f} GiB are usable (memory.budget_gb="
                                f"{cfg.memory.budget_gb}{report.budget_note and ', less the allocator headroom'})."
                                f"\n{report}\nTry: {advice(cfg)}")


def estimate(cfg: ml_collections.ConfigDict, task=None) -> MemoryReport:
    """Builds the task and compiles its train step on abstract shapes; returns the report."""
    from jaxmodels.tasks import build_task
    from jaxmodels.train.build import make_setup
    from jaxmodels.train.step import jit_train_step, make_train_step
    from jaxmodels.train.checkpoint import abstract_with_sharding
    from jaxmodels.train.sharding import make_plan

    task = task or build_task(cfg)
    setup = make_setup(task, cfg)
    plan = make_plan(cfg, setup.abstract_state)  # on a mesh: every number is per device
    step = jit_train_step(make_train_step(task, setup.optimizer, setup.schedule, cfg.train,
                                          setup.trainable, plan.mesh), plan.mesh, plan.state)
    state = abstract_with_sharding(setup.abstract_state, plan.replicated if plan.state is None else plan.state)
    batch = abstract_with_sharding(task.abstract_batch(int(cfg.train.batch_size)), plan.batch)
    report, _ = analyze(step, state, batch, cfg.memory.budget_gb)
    return report
