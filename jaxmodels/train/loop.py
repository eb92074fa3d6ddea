"""`train(cfg, workdir)`: the whole run, for every task and model.

Order of one step's host work: run the step, then (at log/eval/checkpoint steps) fetch the
pending metrics and stop on a non-finite loss, gradient or updated state BEFORE anything is
saved (guard.py), log, save, evaluate. So a checkpoint never holds diverged params, every
line in metrics.jsonl up to a checkpoint's step was written before that checkpoint, and a
failing evaluation can never keep a finished step from being saved.

One process per workdir (lock.py); SIGINT/SIGTERM are caught from the first line of train(),
so a Ctrl-C during compilation or restore stops cleanly too.
"""
from __future__ import annotations

import contextlib
import logging
import os
import time

import jax
import ml_collections
import numpy as np

from jaxmodels.tasks import build_task
from jaxmodels.train import flops as flops_lib
from jaxmodels.train import memory as memory_lib
from jaxmodels.train.build import fresh_state, make_setup
from jaxmodels.train.distributed import NullWriter, host_local, is_primary
from jaxmodels.train.checkpoint import (Checkpointer, abstract_with_sharding, check_compatible,
                                        config_to_json, model_signature, state_signature)
from jaxmodels.train.guard import StepGuard, TrainingDivergedError  # noqa: F401  (re-exported)
from jaxmodels.train.lock import WorkdirLock
from jaxmodels.train.metrics import MetricsWriter, truncate_after
from jaxmodels.train.progress import Reporter, cpu_advice, plan_line, saved_steps
from jaxmodels.train.stopflag import StopFlag
from jaxmodels.train.preflight import check_eval_inputs, check_resume_step, has_eval_line, run_eval_safely
from jaxmodels.train.sharding import describe, make_plan
from jaxmodels.train.step import jit_train_step, make_eval_step, make_train_step

log = logging.getLogger(__name__)


def _rollback(ckpt: Checkpointer, abstract_state, base_state, state, step: int, guard: StepGuard):
    """Params, optimizer state and EMA from the newest good checkpoint; the step counter, rng,
    loss window and data position stay where they are, so the batches that kept failing are
    not replayed (the PaLM recipe: restart before the spike, skip the data that caused it)."""
    ckpt.wait()
    found = ckpt.restore(abstract_state, None, set_aside=False, base_state=base_state)
    if found is None:
        raise TrainingDivergedError(f"{guard.rollback_after} steps in a row were skipped by step {step} and "
                                    f"no checkpoint exists to roll back to; lower optim.lr")
    good_step, good, _ = found
    print(f"\n{guard.rollback_after} steps in a row skipped by step {step}: rolled back the params and "
          f"optimizer state to checkpoint {good_step}; the data continues from step {step}", flush=True)
    return state.replace(params=good.params, opt_state=good.opt_state, ema=good.ema)


def _vetted(err, guard: StepGuard, ckpt: Checkpointer, abstract_state, base_state, task, eval_step,
            cfg, split_sharding) -> TrainingDivergedError:
    """The divergence error after setting aside kept checkpoints that diverge by themselves."""
    if not hasattr(err, "reason"):
        return err
    ckpt.wait()
    eval_bs = int(cfg.train.batch_size) // int(cfg.train.micro_batches)
    batch = _host_batch(next(iter(task.dataset("val", eval_bs, int(cfg.train.seed)))),
                        task.abstract_batch(eval_bs), split_sharding)

    def loss_at(step: int) -> float:
        params = ckpt.restore_step(step, abstract_state, base_state).params
        return float(jax.device_get(eval_step(params, batch)[0]))

    def set_aside(step: int) -> None:
        ckpt._set_aside([step], "diverged_checkpoints")

    return guard.vet_kept(err, ckpt.all_steps(), loss_at, set_aside)


def _host_batch(batch: dict, abstract: dict, split_sharding) -> dict:
    """numpy batch with the abstract batch's dtypes (the compiled step is typed exactly)."""
    missing = sorted(set(batch) - set(abstract))
    if missing:
        raise ValueError(f"batch entries {missing} are not in task.abstract_batch ({sorted(abstract)})")
    out = {k: np.asarray(v, dtype=abstract[k].dtype) for k, v in batch.items()}
    if split_sharding is not None:
        # Each device (of any process) takes its rows of the global batch.
        out = {k: jax.make_array_from_callback(v.shape, split_sharding, lambda idx, v=v: v[idx])
               for k, v in out.items()}
    return out


def evaluate(task, eval_step, state, cfg, workdir: str, step: int, split_sharding=None) -> dict:
    """Val loss (weighted by aux["weight"]) over train.eval_batches batches with the trained
    params, then task.evaluate with the EMA params when the run keeps them."""
    tc = cfg.train
    eval_bs = int(tc.batch_size) // int(tc.micro_batches)
    abstract = task.abstract_batch(eval_bs)
    sums: dict = {}
    total_w = 0.0
    it = iter(task.dataset("val", eval_bs, int(tc.seed)))
    for _ in range(int(tc.eval_batches)):
        try:
            batch = next(it)
        except StopIteration:
            break
        loss, aux = jax.device_get(eval_step(state.params, _host_batch(batch, abstract, split_sharding)))
        w = float(aux.get("weight", 1.0))
        total_w += w
        sums["loss"] = sums.get("loss", 0.0) + float(loss) * w
        for name, value in aux.items():
            if name != "weight":
                sums[name] = sums.get(name, 0.0) + float(value) * w
    out: dict = {"split": "val"}
    if total_w > 0:
        out.update({f"val_{name}": v / total_w for name, v in sums.items()})
    judged = state.ema if state.ema is not None else state.params
    if jax.process_count() > 1:  # samples come from process 0 alone, on its own devices
        judged = host_local(judged)
        if not is_primary():
            return out
    out.update(task.evaluate(judged, step, workdir) or {})
    return out


def _is_every(step: int, every: int) -> bool:
    return every > 0 and step % every == 0


def train(cfg: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains (or resumes) the run in `workdir` to cfg.train.steps; returns the last logged
    train metrics. Re-running the same call after any stop continues exactly."""
    from jaxmodels.config import validate_config
    validate_config(cfg)
    workdir = os.path.abspath(workdir)
    stop = StopFlag()
    stop.install()  # before anything slow: an early Ctrl-C sets the flag, never a half-built run
    try:
        # Many processes: process 0 holds the lock for all of them (they share the workdir).
        with WorkdirLock(workdir) if is_primary() else contextlib.nullcontext():
            return _train(cfg, workdir, stop)
    finally:
        stop.uninstall()


def _stopped_early(stop: StopFlag, what: str) -> bool:
    if stop.signal is None:
        return False
    print(f"\nstopped by signal {stop.signal} {what}; nothing new to save. "
          f"Run the same command again to resume.", flush=True)
    return True


def _train(cfg: ml_collections.ConfigDict, workdir: str, stop: StopFlag) -> dict:
    os.makedirs(workdir, exist_ok=True)
    if _stopped_early(stop, "before the run started"):
        return {}
    if cfg.memory.get("auto_fit", False):  # the fastest plan that fits the budget (autofit.py)
        from jaxmodels.train.autofit import fit_config
        cfg = fit_config(cfg)
    tc = cfg.train
    total_steps, batch_size = int(tc.steps), int(tc.batch_size)
    task = build_task(cfg)
    advice = cpu_advice(cfg)  # before anything compiles: a CPU user learns at once what to run instead
    if advice:
        print(advice, flush=True)
    print(plan_line(cfg, task.unit, float(task.units_per_example()), max(saved_steps(workdir), default=0),
                    workdir), flush=True)
    setup = make_setup(task, cfg)
    plan = make_plan(cfg, setup.abstract_state)  # the mesh and where each array lives on it
    mesh, replicated, split = plan.mesh, plan.replicated, plan.batch
    state_sharding = replicated if plan.state is None else plan.state
    if mesh is not None:
        print(describe(plan, setup.abstract_state), flush=True)
    jitted = jit_train_step(make_train_step(task, setup.optimizer, setup.schedule, tc, setup.trainable, mesh), mesh,
                            plan.state)
    abstract_batch = task.abstract_batch(batch_size)
    abstract_state = abstract_with_sharding(setup.abstract_state, state_sharding)

    step_fn = jitted
    if cfg.memory.check:
        report, compiled = memory_lib.analyze(jitted, abstract_state,
                                              abstract_with_sharding(abstract_batch, split),
                                              cfg.memory.budget_gb)
        print(report, flush=True)
        memory_lib.check_fits(report, cfg)
        step_fn = compiled  # already compiled: don't compile twice
    if _stopped_early(stop, "while compiling"):
        return {}
    check_eval_inputs(task, cfg)

    data_iter = iter(task.dataset("train", batch_size, int(tc.seed)))
    signature = model_signature(setup.abstract_params)
    state_sig = state_signature(setup.abstract_state, setup.trainable)
    meta = {"config": config_to_json(cfg), "signature": signature, "state_signature": state_sig}
    ckpt = Checkpointer(workdir, int(tc.max_to_keep), async_save=bool(tc.get("async_checkpoint", False)),
                        trainable=setup.trainable, writer=is_primary())
    base_state = lambda: fresh_state(task, cfg, setup, state_sharding)  # noqa: E731
    try:
        found = ckpt.restore(abstract_state, data_iter,
                             check_meta=lambda m: check_compatible(m, cfg, signature, workdir, state_sig),
                             base_state=base_state)
        if found is not None:
            check_resume_step(found[0], total_steps, workdir)
    except BaseException:
        ckpt.close()
        raise
    if found is not None:
        step, state, _ = found
        print(f"resumed from {ckpt.manager.directory} at step {step}", flush=True)
    else:
        step, state = 0, fresh_state(task, cfg, setup, state_sharding)
    if _stopped_early(stop, f"before step {step + 1}"):
        ckpt.close()
        return {}
    metrics_path = os.path.join(workdir, "metrics.jsonl")
    primary = is_primary()
    if primary:
        truncate_after(metrics_path, step)

    eval_step = make_eval_step(task, mesh, plan.params)
    units_per_batch = batch_size * float(task.units_per_example())
    flops_per_example = float(task.flops_per_example())
    n_devices = flops_lib.peak_units(mesh)
    peak = None
    if flops_per_example > 0:
        dtype = str(cfg.model.get("dtype", "float32")) if "model" in cfg else "float32"
        peak = flops_lib.peak_flops(dtype=dtype)
    writer = MetricsWriter(workdir, bool(tc.tensorboard)) if primary else NullWriter()
    if found is not None and (_is_every(step, int(tc.eval_every)) or step == total_steps) \
            and not has_eval_line(metrics_path, step):
        # Killed between this step's save and its eval (saves come first): redo the eval.
        run_eval_safely(lambda: evaluate(task, eval_step, state, cfg, workdir, step, split), writer, step, tc)
    bar = None
    if tc.progress and primary:
        from tqdm import tqdm
        bar = tqdm(total=total_steps, initial=step, unit="step", dynamic_ncols=True)
    report = Reporter(cfg, task.unit, units_per_batch, bar,
                      stream=None if primary else open(os.devnull, "w"))  # noqa: SIM115

    pending: list = []
    last: dict = {}
    last_saved = step if found is not None else -1
    guard = StepGuard(tc, workdir, last_saved)
    # Besides every checkpoint_every steps, save when checkpoint_minutes have passed, so a
    # slow run (a big model on a CPU) never has more than that much work at risk.
    save_seconds = 60.0 * float(tc.get("checkpoint_minutes", 0.0) or 0.0)
    t_saved = time.perf_counter()
    # Likewise evaluate (samples, grids) every eval_minutes of wall time when set.
    eval_seconds = 60.0 * float(tc.get("eval_minutes", 0.0) or 0.0)
    t_evaluated = time.perf_counter()
    t_mark, steps_since_mark = None, 0
    # The first sample grid / eval comes with the first checkpoint of a fresh run (minutes on
    # a CPU), not only at eval_every (hours there).
    early_eval = found is None and (int(tc.eval_every) > 0 or eval_seconds > 0)
    try:
        while step < total_steps and stop.signal is None:
            batch = _host_batch(next(data_iter), abstract_batch, split)
            state, metrics = step_fn(state, batch)
            step += 1
            pending.append((step, metrics))
            if len(pending) >= 2:
                # Stay at most one step ahead of the device, so the wall-time checks below
                # (checkpoint_minutes, eval_minutes) fire on time, not log_every steps late.
                jax.block_until_ready(pending[-2][1])
            report.step_done(step, metrics)
            if t_mark is None:  # first step of this process: exclude compile time from throughput
                jax.block_until_ready(metrics)
                t_mark, steps_since_mark = time.perf_counter(), 0
            else:
                steps_since_mark += 1
            final = step == total_steps
            do_log = _is_every(step, int(tc.log_every)) or final
            do_eval = (_is_every(step, int(tc.eval_every)) or final
                       or (eval_seconds > 0 and time.perf_counter() - t_evaluated >= eval_seconds))
            do_ckpt = (_is_every(step, int(tc.checkpoint_every)) or final or stop.signal is not None
                       or (save_seconds > 0 and time.perf_counter() - t_saved >= save_seconds))
            do_eval = do_eval or (early_eval and do_ckpt and stop.signal is None)
            if not (do_log or do_eval or do_ckpt or len(pending) >= max(1, int(tc.log_every))):
                continue
            fetched = jax.device_get(pending)
            pending = []
            try:
                if guard.inspect(fetched):  # train.rollback_after skipped steps in a row
                    state = _rollback(ckpt, abstract_state, base_state, state, step, guard)
            except TrainingDivergedError as e:
                raise _vetted(e, guard, ckpt, abstract_state, base_state, task, eval_step, cfg, split) from None
            now = time.perf_counter()
            rate = steps_since_mark / (now - t_mark) if steps_since_mark else 0.0
            if do_ckpt:
                # The previous async save must be on disk before this step is logged (its own
                # save would wait for it anyway): a kill then never redoes more than
                # 2 * checkpoint_every - 1 logged steps.
                ckpt.wait()
            if do_log:
                m = {k: float(v) for k, v in fetched[-1][1].items()}
                if rate:
                    m[f"{task.unit}_per_s"] = rate * units_per_batch
                    m["steps_per_s"] = rate
                    u = flops_lib.mfu(flops_per_example, rate * batch_size, peak, n_devices)
                    if u is not None:
                        m["mfu"] = u
                writer.write(step, m)
                report.log(step, m)
                last = {"step": step, **m}
                if bar is not None:
                    post = {"loss": f"{m['loss']:.4f}"}
                    if rate:
                        post[f"{task.unit}/s"] = f"{rate * units_per_batch:,.0f}"
                    if "mfu" in m:
                        post["mfu"] = f"{100 * m['mfu']:.1f}%"
                    if "moe_aux" in m:  # Mixture-of-Experts routing (jaxmodels.layers.moe)
                        post["moe_aux"] = f"{m['moe_aux']:.3f}"
                        post["dropped"] = f"{100 * m['moe_dropped']:.1f}%"
                    bar.set_postfix(post, refresh=False)
                t_mark, steps_since_mark = time.perf_counter(), 0
            if bar is not None:
                bar.update(step - bar.n)
            if do_ckpt:  # before eval: a failing eval must never cost the step's checkpoint
                ckpt.save(step, state, data_iter, meta)
                last_saved, t_saved = step, time.perf_counter()
                guard.last_saved = last_saved
            if do_eval:
                evaluated = run_eval_safely(lambda: evaluate(task, eval_step, state, cfg, workdir, step, split),
                                            writer, step, tc)
                if evaluated is not None:
                    report.eval(step, evaluated)
                early_eval = False
                t_mark, steps_since_mark = time.perf_counter(), 0
                t_evaluated = t_mark
        if stop.signal is not None and last_saved != step:
            ckpt.save(step, state, data_iter, meta)
        if stop.signal is not None:
            print(f"\nstopped by signal {stop.signal} at step {step}; checkpoint saved in {workdir}. "
                  f"Run the same command again to resume.", flush=True)
    finally:
        if bar is not None:
            bar.close()
        writer.close()
        ckpt.close()
    return last
