"""Checkpoints: one Orbax CheckpointManager per workdir holding `state` (TrainState), `data`
(the grain iterator position) and `meta` (JSON: config + model-shape signature).

A *finished* checkpoint damaged later stays Orbax's `latest_step()` and only fails on
restore, so restore walks `all_steps()` newest-first and falls back with a warning. Damage
that still decodes (bytes changed in place) is caught by checksums (integrity.py).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import traceback
import warnings
from typing import Any, Callable, Optional

import jax
import ml_collections
import orbax.checkpoint as ocp

from jaxmodels.config import ConfigError
from jaxmodels.train import integrity, save_log

PyTree = Any
log = logging.getLogger(__name__)


# train fields that change what a TrainState holds (optim.* fields all may).
STATE_FIELDS = ("ema_decay", "skip_loss_z", "skip_window", "carry_state")  # carry_state: task section


class CheckpointMismatchError(ConfigError):
    """The workdir holds a checkpoint of a model with other shapes than the config's."""


class DamagedCheckpointWarning(RuntimeWarning):
    """A checkpoint was skipped as damaged. Raised for callers that catch warnings (tests,
    fault injection); not printed by default, because the same message is logged once."""


warnings.filterwarnings("ignore", category=DamagedCheckpointWarning, append=True)  # -W options still win


@dataclasses.dataclass(frozen=True)
class _Failure:
    """Why a checkpoint did not read, as text (name, message, formatted traceback)."""
    name: str
    text: str
    traceback: str

    @classmethod
    def of(cls, error: BaseException) -> "_Failure":
        return cls(type(error).__name__, str(error), "".join(traceback.format_exception(error)))


class _Damaged(Exception):
    """Checkpointer._read: this checkpoint does not read or verify (`error` says why)."""

    def __init__(self, error: Exception):
        super().__init__(str(error))
        self.error = error


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


def check_compatible(meta: dict, cfg: ml_collections.ConfigDict, signature: dict, workdir: str,
                     state_signature: Optional[dict] = None) -> None:
    """Raises CheckpointMismatchError naming the differing model fields and param shapes, or
    (same params, other optimizer/EMA layout) the differing optim/train fields."""
    old_sig = meta.get("signature", {})
    if old_sig == signature:
        old_state = meta.get("state_signature")
        if state_signature is not None and old_state is not None and old_state != state_signature:
            _refuse_state_change(meta, cfg, old_state, state_signature, workdir)
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


def _refuse_state_change(meta: dict, cfg, old_state: dict, new_state: dict, workdir: str) -> None:
    """The optimizer state or EMA differ in layout: name the config fields that did it."""
    old_cfg, new_cfg = meta.get("config", {}), config_to_json(cfg)
    fields = []
    for section in ("optim", "train", "task"):
        old, new = _flatten(old_cfg.get(section, {}), section), _flatten(new_cfg.get(section, {}), section)
        fields += [f"{k}: {old.get(k, '<unset>')!r} in the checkpoint, {new.get(k, '<unset>')!r} now"
                   for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)
                   and (section == "optim" or k.split(".")[-1] in STATE_FIELDS)]
    leaves = [k for k in sorted(set(old_state) | set(new_state)) if old_state.get(k) != new_state.get(k)]
    raise CheckpointMismatchError(
        f"cannot resume from {checkpoint_dir(workdir)}: its optimizer state / EMA has another layout "
        f"than this config builds ({len(leaves)} differing entries, e.g. {leaves[0]}).\n"
        f"  differing fields: {'; '.join(fields) or 'none (the code changed the layout)'}\n"
        f"Set those fields back to resume, or pass a fresh --workdir to start a new run.")


def state_signature(abstract_state, trainable: Optional[PyTree]) -> dict:
    """model_signature of everything a checkpoint holds (params, optimizer, EMA, step, rng)."""
    return model_signature(strip_frozen(abstract_state, trainable))


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


class NoGoodCheckpointError(ConfigError, FileNotFoundError):
    """The workdir holds checkpoints, but none of them could be restored."""


class CheckpointSaveError(OSError):
    """A save failed (e.g. a full disk); its temporary folder was removed. `details`: a file
    with Orbax's tracebacks of the failure (None if it could not be written)."""

    def __init__(self, message: str, details: Optional[str] = None):
        super().__init__(message)
        self.details = details


def frozen_fingerprint(params: PyTree, trainable: Optional[PyTree]) -> Optional[str]:
    """CRC32 over the frozen (non-trainable) params: which base a LoRA run's adapters belong
    to. It changes with train.seed (a random base) and with init_from's weights; None when
    everything trains."""
    if trainable is None:
        return None
    frozen = [x for x, keep in zip(jax.tree.leaves(params), jax.tree.leaves(trainable)) if not keep]
    return integrity.json_crc([integrity.array_checksum(x) for x in frozen])


def _tmp_dirs(directory: str) -> list[str]:
    if not os.path.isdir(directory):
        return []
    return [os.path.join(directory, d) for d in os.listdir(directory) if ".orbax-checkpoint-tmp" in d]


class Checkpointer:
    """Saves and restores (state, data iterator, meta) in `workdir/checkpoints`.

    trainable: the run's trainable mask; frozen params are left out of every save and
    restore() fills them from `base_state()` (see strip_frozen).
    writer: True only for the training process (it holds the workdir lock): it may delete
    temporary folders left by a killed or failed save. Readers never touch the folder.
    """

    def __init__(self, workdir: str, max_to_keep: int = 3, async_save: bool = True,
                 trainable: Optional[PyTree] = None, writer: bool = False):
        self.workdir = workdir
        self.trainable = trainable
        self.writer = writer
        self._base_fp: Optional[str] = None
        if writer:
            self._remove_tmp()
        options = ocp.CheckpointManagerOptions(max_to_keep=max(2, int(max_to_keep)), create=True,
                                               enable_async_checkpointing=async_save)
        self.manager = ocp.CheckpointManager(checkpoint_dir(workdir), options=options)
        self._saving: Optional[int] = None
        self._error: Optional[CheckpointSaveError] = None

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def _remove_tmp(self) -> list[str]:
        removed = []
        for path in _tmp_dirs(checkpoint_dir(self.workdir)):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
        return removed

    def _failed(self, step: Optional[int], error: Exception) -> CheckpointSaveError:
        """Cleans up after a failed save and says what is kept, in one line; Orbax's own
        tracebacks of it go to a details file the line names (see save_log). The same error
        again for later calls (close() waits on the failed save once more)."""
        if self._error is not None:
            return self._error
        details = save_log.write_details(error)
        removed = self._remove_tmp() if self.writer else []
        folder = checkpoint_dir(self.workdir)
        kept = sorted(int(d) for d in os.listdir(folder) if d.isdigit()) if os.path.isdir(folder) else []
        self._error = CheckpointSaveError(
            f"saving checkpoint {step} in {checkpoint_dir(self.workdir)} failed ({type(error).__name__}: "
            f"{str(error).splitlines()[0][:200] if str(error) else ''}); "
            f"{'removed its temporary folder; ' if removed else ''}"
            f"kept checkpoints: {kept or 'none'}. Free disk space and run the same command again."
            f"{f' (details: {details})' if details else ''}", details)
        return self._error

    def save(self, step: int, state: PyTree, data_iter, meta: dict) -> None:
        """Starts an (async) save; the iterator state and the checksums are captured now."""
        stripped = strip_frozen(state, self.trainable)
        extra = {"checksums": integrity.tree_checksums(stripped)}
        if self.trainable is not None:
            if self._base_fp is None:  # the frozen base never changes within a run
                self._base_fp = frozen_fingerprint(state.params, self.trainable)
            extra["base_fingerprint"] = self._base_fp
        items = dict(state=ocp.args.StandardSave(stripped))
        if data_iter is not None:
            import grain  # only runs that have a data pipeline need grain
            extra["data_crc32"] = integrity.json_crc(data_iter.get_state())
            items["data"] = grain.checkpoint.CheckpointSave(data_iter)
        items["meta"] = ocp.args.JsonSave(integrity.seal_meta({**meta, **extra}))
        self.wait()  # the previous async save's error (e.g. a full disk) is reported as its own
        save_log.hold()  # until wait() says how it went: Orbax's tracebacks of a failure are held
        try:
            self.manager.save(int(step), args=ocp.args.Composite(**items), force=True)
        except Exception as e:  # e.g. ENOSPC, or the previous async save's error
            raise self._failed(int(step), e) from e
        self._saving = int(step)

    def wait(self) -> None:
        try:
            self.manager.wait_until_finished()
        except Exception as e:
            raise self._failed(self._saving, e) from e
        save_log.release()

    def close(self) -> None:
        try:
            self.wait()
        except BaseException:
            try:
                self.manager.close()
            except Exception:  # Orbax raises the failed save's error once more: reported already
                pass
            raise
        try:
            self.manager.close()
        except Exception as e:
            raise self._failed(self._saving, e) from e

    def restore_meta(self, step: int) -> dict:
        meta = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        return integrity.verify_meta(meta)

    def restore(self, abstract_state: PyTree, data_iter=None,
                check_meta: Optional[Callable[[dict], None]] = None, set_aside: bool = True,
                base_state: Optional[Callable[[], PyTree]] = None, steps: Optional[list[int]] = None):
        """Newest restorable checkpoint -> (step, state, meta); None when there is none.

        base_state: builds a fresh state whose frozen params fill the restored one (needed
        when the Checkpointer has a trainable mask); its fingerprint must match the saved one.

        Each damaged checkpoint (unreadable, or a checksum that differs) is skipped with a
        warning. check_meta may raise (e.g. CheckpointMismatchError): that is a user error,
        never a reason to fall back.
        set_aside: move damaged newer checkpoints out of the way (a resuming run must, so
        it can save those steps again; a reader such as load_params need not).
        steps: consider only these (default: all).
        """
        steps = self.all_steps() if steps is None else list(steps)
        errors = []
        base = None
        for step in reversed(steps):
            held = save_log.hold(all_threads=True)  # what a failed read leaves behind goes to a details file
            try:
                meta, restored = self._read(step, abstract_state, data_iter, check_meta)
                failed = None
            except _Damaged as damaged:
                # Text only: the exception's frames keep the read's coroutines alive, and
                # drop() must let the garbage collector finalise them while still held.
                failed = _Failure.of(damaged.error)
            except BaseException:
                if held:
                    save_log.release()
                raise
            if failed is not None:
                errors.append(self._skip(step, failed, save_log.drop(failed.traceback) if held else None))
                continue
            if held:
                save_log.release()  # the read went well: what was held prints as it was
            state = restored["state"]
            if self.trainable is not None:
                base = base if base is not None else base_state()
                self._check_base(meta, base, step)
                state = fill_frozen(state, base, self.trainable)
            if set_aside:
                self._set_aside([s for s in steps if s > step])
            return step, state, meta
        if steps:
            raise NoGoodCheckpointError(
                f"no checkpoint in {checkpoint_dir(self.workdir)} could be restored (steps {steps}): "
                + " | ".join(errors) + ". Move the folder away to start over.")
        return None

    def _read(self, step: int, abstract_state: PyTree, data_iter, check_meta) -> tuple[dict, dict]:
        """(meta, restored items) of checkpoint `step`; _Damaged when it does not read or verify
        (check_meta's own errors pass through: a user error, never a reason to fall back)."""
        try:
            meta = self.restore_meta(step)
        except Exception as e:  # damaged meta: the caller tries an older checkpoint
            raise _Damaged(e) from None
        if check_meta is not None:
            check_meta(meta)
        items = dict(state=ocp.args.StandardRestore(strip_frozen(abstract_state, self.trainable)))
        if data_iter is not None:
            import grain
            items["data"] = grain.checkpoint.CheckpointRestore(data_iter)
        try:
            restored = self.manager.restore(step, args=ocp.args.Composite(**items))
            integrity.verify_tree(restored["state"], meta.get("checksums"), f"checkpoint {step}")
            if data_iter is not None and "data_crc32" in meta:
                if integrity.json_crc(data_iter.get_state()) != meta["data_crc32"]:
                    raise integrity.ChecksumMismatchError(f"checkpoint {step}: data position checksum mismatch")
        except Exception as e:
            raise _Damaged(e) from None
        return meta, restored

    def _check_base(self, meta: dict, base, step: int) -> None:
        saved = meta.get("base_fingerprint")
        if saved is None:
            return
        if self._base_fp is None:
            self._base_fp = frozen_fingerprint(base.params, self.trainable)
        if self._base_fp != saved:
            old = meta.get("config", {})
            old_seed = old.get("train", {}).get("seed")
            old_init = old.get("init_from", "")
            raise CheckpointMismatchError(
                f"cannot resume from {checkpoint_dir(self.workdir)}: checkpoint {step} holds adapters "
                f"trained on another frozen base (saved with train.seed={old_seed!r}, "
                f"init_from={old_init!r}; the base built now has other weights). Resume with the "
                f"same seed and init_from weights, or pass a fresh --workdir.")

    def restore_step(self, step: int, abstract_state: PyTree, base_state=None):
        """The state of checkpoint `step` (no fallback, no data position)."""
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(strip_frozen(abstract_state, self.trainable))))["state"]
        return fill_frozen(restored, base_state(), self.trainable) if self.trainable is not None else restored

    def _set_aside(self, damaged: list[int], folder: str = "damaged_checkpoints") -> None:
        """Moves damaged checkpoints newer than the restored one to workdir/damaged_checkpoints/,
        so the resumed run can save those steps again (and the files stay for inspection)."""
        if not damaged:
            return
        self.manager.wait_until_finished()
        if jax.process_index() == 0:  # many processes share the folder: one moves, all wait
            aside = os.path.join(os.path.abspath(self.workdir), folder)
            os.makedirs(aside, exist_ok=True)
            for step in damaged:
                src = os.path.join(checkpoint_dir(self.workdir), str(step))
                dst = os.path.join(aside, f"{step}.{len(os.listdir(aside))}")
                if os.path.isdir(src):
                    os.rename(src, dst)
                    log.warning("moved damaged checkpoint %s to %s", src, dst)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils
            multihost_utils.sync_global_devices("jaxmodels_set_aside")
        self.manager.reload()

    def _skip(self, step: int, error: "_Failure", details: Optional[str] = None) -> str:
        msg = (f"checkpoint {step} in {checkpoint_dir(self.workdir)} is damaged "
               f"({error.name}: {error.text.replace(chr(10), ' ')[:200]}); falling back to an older one"
               + (f" (details: {details})" if details else ""))
        # One line on stderr (the log record); the warning is for callers that catch it and
        # is not printed (see DamagedCheckpointWarning).
        warnings.warn(msg, DamagedCheckpointWarning, stacklevel=3)
        log.warning(msg)
        return f"{step}: {error.name}"


def abstract_with_sharding(tree: PyTree, sharding=None) -> PyTree:
    """ShapeDtypeStructs carrying a sharding (Orbax restores onto it, reading on each device
    only its shards, whatever mesh saved them); default: device 0. sharding: one for every
    leaf, or a tree of them with tree's structure (sharding.make_plan)."""
    sharding = sharding or jax.sharding.SingleDeviceSharding(jax.devices()[0])
    if isinstance(sharding, jax.sharding.Sharding):
        return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, sharding)


def newest_meta(workdir: str, step: Optional[int] = None) -> tuple[int, dict]:
    """(step, meta) of the newest checkpoint whose meta reads and verifies (or of `step`).
    A damaged newer meta is skipped with a warning, as restore() does."""
    probe = Checkpointer(workdir, async_save=False)
    try:
        steps = [step] if step is not None else probe.all_steps()
        errors = []
        for s in reversed(steps):
            try:
                return s, probe.restore_meta(s)
            except Exception as e:  # noqa: BLE001  (any damage: try an older one)
                errors.append(probe._skip(s, _Failure.of(e)))
        if not steps:
            raise FileNotFoundError(f"no checkpoint in {checkpoint_dir(workdir)}")
        raise NoGoodCheckpointError(f"no checkpoint in {checkpoint_dir(workdir)} has a readable meta "
                                    f"(steps {steps}): " + " | ".join(errors))
    finally:
        probe.close()


def restore_newest(workdir: str, step: Optional[int] = None):
    """(step, cfg, state) of the newest good checkpoint in workdir, falling back past damaged
    ones exactly as a resuming run does; reads only (no lock, nothing moved or deleted), so
    it is safe while a run trains in the same workdir. `step`: that checkpoint only."""
    from jaxmodels.tasks import build_task
    from jaxmodels.train.build import fresh_state, make_setup

    readable, meta = newest_meta(workdir, step)
    cfg = ml_collections.ConfigDict(meta["config"])
    task = build_task(cfg)
    setup = make_setup(task, cfg)
    abstract = abstract_with_sharding(setup.abstract_state)
    base = lambda: fresh_state(task, cfg, setup)  # noqa: E731  (frozen base of LoRA runs)
    ckpt = Checkpointer(workdir, async_save=False, trainable=setup.trainable)
    try:
        # Steps newer than `readable` have a damaged meta, reported once already.
        steps = [step] if step is not None else [s for s in ckpt.all_steps() if s <= readable]
        found = ckpt.restore(abstract, set_aside=False, base_state=base, steps=steps)
    finally:
        ckpt.close()
    if found is None:
        raise FileNotFoundError(f"no checkpoint in {checkpoint_dir(workdir)}")
    got, state, meta = found
    return got, ml_collections.ConfigDict(meta["config"]), state


def load_params(workdir: str, use_ema: bool = True, step: Optional[int] = None):
    """(cfg, params) of the newest good checkpoint in workdir (for sampling / generation).

    use_ema: return the EMA params when the run kept them (train.ema_decay > 0).
    """
    _, cfg, state = restore_newest(workdir, step)
    params = state.ema if (use_ema and state.ema is not None) else state.params
    return cfg, params
