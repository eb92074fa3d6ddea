"""Checkpoints: one Orbax CheckpointManager per workdir holding `state` (TrainState), `data`
(the grain iterator position) and `meta` (JSON: config + model-shape signature).

docs/cpu_notes.md: a *finished* checkpoint damaged later stays `latest_step()` and only fails on
restore, so restore walks `all_steps()` newest-first and falls back with a warning.
"""
from __future__ import annotations

import json
import logging
import os
import warnings
from typing import Any, Callable, Optional

import jax
import ml_collections
import orbax.checkpoint as ocp

from jaxmodels.config import ConfigError

PyTree = Any
log = logging.getLogger(__name__)


class CheckpointMismatchError(ConfigError):
    """The workdir holds a checkpoint of a model with other shapes than the config's."""


def checkpoint_dir(workdir: str) -> str:
    return os.path.join(os.path.abspath(workdir), "checkpoints")


def model_signature(abstract_params: PyTree) -> dict:
    """{"path/to/leaf": "float32[2,32,64]"} for every param: what must match to resume."""
    flat = jax.tree_util.tree_flatten_with_path(abstract_params)[0]
    return {jax.tree_util.keystr(path, simple=True, separator="/"): f"{x.dtype}{list(x.shape)}"
            for path, x in flat}


def config_to_json(cfg: ml_collections.ConfigDict) -> dict:
    return json.loads(cfg.to_json_best_effort())


def _flatten(d: Any, prefix: str = "") -> dict:
    if not isinstance(d, dict):
        return {prefix: d}
    out = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def check_compatible(meta: dict, cfg: ml_collections.ConfigDict, signature: dict, workdir: str) -> None:
    """Raises CheckpointMismatchError naming the differing model fields and param shapes."""
    old_sig = meta.get("signature", {})
    if old_sig == signature:
        return
    old_model = _flatten(meta.get("config", {}).get("model", {}), "model")
    new_model = _flatten(config_to_json(cfg).get("model", {}), "model")
    fields = [f"{k}: {old_model.get(k, '<unset>')!r} in the checkpoint, {new_model.get(k, '<unset>')!r} now"
              for k in sorted(set(old_model) | set(new_model)) if old_model.get(k) != new_model.get(k)]
    shapes = [f"{k}: {old_sig.get(k, '<absent>')} in the checkpoint, {signature.get(k, '<absent>')} now"
              for k in sorted(set(old_sig) | set(signature)) if old_sig.get(k) != signature.get(k)]
    more = f" (and {len(shapes) - 5} more)" if len(shapes) > 5 else ""
    raise CheckpointMismatchError(
        f"cannot resume from {checkpoint_dir(workdir)}: it holds a model of other shapes.\n"
        f"  differing model fields: {'; '.join(fields) or 'none (the code changed the shapes)'}\n"
        f"  differing params: {'; '.join(shapes[:5])}{more}\n"
        f"Pass a fresh --workdir to start a new run, or restore the model fields to resume.")


def strip_frozen(state, trainable: Optional[PyTree]):
    """The state with frozen params (and their EMA) replaced by None: what a checkpoint holds.

    LoRA/QLoRA freeze the base model; it is rebuilt exactly from the seed or
    config.init_from on resume, so checkpoints hold only the adapters (a 7B NF4 base would
    otherwise add ~4 GB to every save). trainable None: everything trains, nothing stripped.
    """
    if trainable is None:
        return state
    strip = lambda tree: jax.tree.map(lambda x, keep: x if keep else None, tree, trainable)  # noqa: E731
    return state.replace(params=strip(state.params),
                         ema=None if state.ema is None else strip(state.ema))


def fill_frozen(saved, base, trainable: Optional[PyTree]):
    """Inverse of strip_frozen: frozen leaves come from `base` (a freshly built state)."""
    if trainable is None:
        return saved
    keep = jax.tree.leaves(trainable)

    def fill(saved_tree, base_tree):
        base_leaves, treedef = jax.tree.flatten(base_tree)
        saved_leaves = treedef.flatten_up_to(saved_tree)
        return treedef.unflatten([s if k else b for s, b, k in zip(saved_leaves, base_leaves, keep)])
    return saved.replace(params=fill(saved.params, base.params),
                         ema=None if saved.ema is None else fill(saved.ema, base.ema))


class Checkpointer:
    """Saves and restores (state, data iterator, meta) in `workdir/checkpoints`.

    trainable: the run's trainable mask; frozen params are left out of every save and
    restore() fills them from `base_state()` (see strip_frozen).
    """

    def __init__(self, workdir: str, max_to_keep: int = 3, async_save: bool = True,
                 trainable: Optional[PyTree] = None):
        self.workdir = workdir
        self.trainable = trainable
        options = ocp.CheckpointManagerOptions(max_to_keep=max(2, int(max_to_keep)), create=True,
                                               enable_async_checkpointing=async_save)
        self.manager = ocp.CheckpointManager(checkpoint_dir(workdir), options=options)

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def save(self, step: int, state: PyTree, data_iter, meta: dict) -> None:
        """Starts an (async) save; the iterator state is captured now."""
        items = dict(state=ocp.args.StandardSave(strip_frozen(state, self.trainable)),
                     meta=ocp.args.JsonSave(meta))
        if data_iter is not None:
            import grain  # only runs that have a data pipeline need grain
            items["data"] = grain.checkpoint.CheckpointSave(data_iter)
        self.manager.save(int(step), args=ocp.args.Composite(**items), force=True)

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()

    def restore_meta(self, step: int) -> dict:
        return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

    def restore(self, abstract_state: PyTree, data_iter=None,
                check_meta: Optional[Callable[[dict], None]] = None, set_aside: bool = True,
                base_state: Optional[Callable[[], PyTree]] = None):
        """Newest restorable checkpoint -> (step, state, meta); None when there is none.

        base_state: builds a fresh state whose frozen params fill the restored one (needed
        when the Checkpointer has a trainable mask).

        Each damaged checkpoint is skipped with a warning. check_meta may raise (e.g.
        CheckpointMismatchError): that is a user error, never a reason to fall back.
        set_aside: move damaged newer checkpoints out of the way (a resuming run must, so
        it can save those steps again; a reader such as load_params need not).
        """
        steps = self.all_steps()
        errors = []
        for step in reversed(steps):
            try:
                meta = self.restore_meta(step)
            except Exception as e:  # damaged meta: try an older checkpoint
                errors.append(self._skip(step, e))
                continue
            if check_meta is not None:
                check_meta(meta)
            items = dict(state=ocp.args.StandardRestore(strip_frozen(abstract_state, self.trainable)))
            if data_iter is not None:
                import grain
                items["data"] = grain.checkpoint.CheckpointRestore(data_iter)
            try:
                restored = self.manager.restore(step, args=ocp.args.Composite(**items))
            except Exception as e:
                errors.append(self._skip(step, e))
                continue
            if set_aside:
                self._set_aside([s for s in steps if s > step])
            state = restored["state"]
            if self.trainable is not None:
                state = fill_frozen(state, base_state(), self.trainable)
            return step, state, meta
        if steps:
            raise RuntimeError(f"no checkpoint in {checkpoint_dir(self.workdir)} could be restored "
                               f"(steps {steps}): " + " | ".join(errors))
        return None

    def _set_aside(self, damaged: list[int]) -> None:
        """Moves damaged checkpoints newer than the restored one to workdir/damaged_checkpoints/,
        so the resumed run can save those steps again (and the files stay for inspection)."""
        if not damaged:
            return
        self.manager.wait_until_finished()
        aside = os.path.join(os.path.abspath(self.workdir), "damaged_checkpoints")
        os.makedirs(aside, exist_ok=True)
        for step in damaged:
            src = os.path.join(checkpoint_dir(self.workdir), str(step))
            dst = os.path.join(aside, f"{step}.{len(os.listdir(aside))}")
            if os.path.isdir(src):
                os.rename(src, dst)
                log.warning("moved damaged checkpoint %s to %s", src, dst)
        self.manager.reload()

    def _skip(self, step: int, error: Exception) -> str:
        msg = (f"checkpoint {step} in {checkpoint_dir(self.workdir)} is damaged "
               f"({type(error).__name__}: {str(error)[:200]}); falling back to an older one")
        warnings.warn(msg, RuntimeWarning, stacklevel=3)
        log.warning(msg)
        return f"{step}: {type(error).__name__}"


def abstract_with_sharding(tree: PyTree, sharding=None) -> PyTree:
    """ShapeDtypeStructs carrying a sharding (Orbax restores onto it); default: device 0."""
    sharding = sharding or jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


def load_params(workdir: str, use_ema: bool = True, step: Optional[int] = None):
    """(cfg, params) of the newest good checkpoint in workdir (for sampling / generation).

    use_ema: return the EMA params when the run kept them (train.ema_decay > 0).
    """
    from jaxmodels.tasks import build_task
    from jaxmodels.train.build import fresh_state, make_setup

    probe = Checkpointer(workdir, async_save=False)
    try:
        steps = [step] if step is not None else probe.all_steps()
        if not steps:
            raise FileNotFoundError(f"no checkpoint in {checkpoint_dir(workdir)}")
        meta = probe.restore_meta(steps[-1])
    finally:
        probe.close()
    cfg = ml_collections.ConfigDict(meta["config"])
    task = build_task(cfg)
    setup = make_setup(task, cfg)
    abstract = abstract_with_sharding(setup.abstract_state)
    base = lambda: fresh_state(task, cfg, setup)  # noqa: E731  (frozen base of LoRA runs)
    ckpt = Checkpointer(workdir, async_save=False, trainable=setup.trainable)
    try:
        if step is None:
            found = ckpt.restore(abstract, set_aside=False, base_state=base)
            if found is None:
                raise FileNotFoundError(f"no checkpoint in {checkpoint_dir(workdir)}")
            _, state, meta = found
        else:
            state = ckpt.manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(strip_frozen(abstract, setup.trainable))))["state"]
            state = fill_frozen(state, base(), setup.trainable) if setup.trainable is not None else state
        cfg = ml_collections.ConfigDict(meta["config"])
    finally:
        ckpt.close()
    params = state.ema if (use_ema and state.ema is not None) else state.params
    return cfg, params
