"""What a failed checkpoint save prints: one line, not the background threads' tracebacks.

When a save fails in Orbax's background threads (a full disk, say), the training loop
reports it as one CheckpointSaveError line. But before that, Orbax logs the error with its
traceback from each thread that saw it (a few hundred lines). And Orbax closes the event
loop of the failed write while TensorStore writes are still pending; as they finish,
TensorStore's threads try to wake the closed loop and print bare
`RuntimeError: Event loop is closed` tracebacks to stderr, before or after the error line,
depending on timing (a DiT run on a full disk once ended with one).

So, while a save is in flight (hold() until release()), whatever other threads print is
held back: Orbax's ERROR log records, other threads' warnings, and writes to sys.stderr from any thread but the one
that started the save. A save that succeeds releases it all as it was (nothing is hidden);
a failed one writes it to a details file that its one-line error names, and later output
from those threads goes to that file too. `redirect_stderr_to` does the same for whatever
the process prints at interpreter exit.

Restores are held the same way (Checkpointer.restore). A read that fails on a damaged
checkpoint leaves Orbax's read coroutines behind; they catch the GeneratorExit of their
closing as an error, so whenever the garbage collector gets to them (later, anywhere in
the run) Python prints an `Exception ignored in: <coroutine ...>` traceback for each,
after our one-line "damaged, falling back" warning. So while a step is read,
unraisable-exception reports are held too; if the read fails, `drop` collects that garbage
at once (so its reports come now, into the hold) and writes everything held to a details
file the warning names; a read that succeeds releases what was held as it was. Some of
those coroutines are still referenced then (by the read's own threads) and are finalised
later, and TensorStore's threads may still wake the read's closed event loop; from a failed
read on, those reports go to the newest such file whenever they come (`_leftover`), and
every other unraisable report prints as usual. asyncio's "exception was never retrieved"
records (one damaged file fails every read waiting on it; only the first error is raised)
and, after a failed read, what other threads than the main one write to sys.stderr are held
and sent on the same way.
"""
from __future__ import annotations

import gc
import logging
import os
import sys
import tempfile
import threading
import traceback
from typing import Optional

_PASS = "_jaxmodels_released"  # set on a record released after a good save: let it through
_leftovers: Optional[str] = None  # the details file of the newest failed restore read


def _format_unraisable(args) -> str:
    head = f"{args.err_msg or 'Exception ignored in'}: {args.object!r}\n"
    return head + "".join(traceback.format_exception(args.exc_type, args.exc_value, args.exc_traceback))


def _leftover(args) -> bool:
    """After a failed restore read, an unraisable report that the read left behind: an Orbax
    read coroutine finalised, or TensorStore's threads waking the read's closed event loop
    (`RuntimeError: Event loop is closed`, as after a failed save). Appended to that read's
    details file (True), else left to the caller (False)."""
    if _leftovers is None:
        return False
    code = getattr(args.object, "cr_code", None)
    orbax_coroutine = code is not None and f"{os.sep}orbax{os.sep}" in code.co_filename
    closed_loop = args.exc_type is RuntimeError and str(args.exc_value) == "Event loop is closed"
    if not (orbax_coroutine or closed_loop):
        return False
    try:
        with open(_leftovers, "a") as f:
            f.write(_format_unraisable(args))
    except OSError:
        pass
    return True


def _unraisable_hook(args) -> None:
    """sys.unraisablehook from the first failed restore read on (see the module docstring)."""
    if not _leftover(args):
        sys.__unraisablehook__(args)


def _from_orbax(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.ERROR and f"{os.sep}orbax{os.sep}" in (record.pathname or "")


def _abandoned_read(record: logging.LogRecord) -> bool:
    """asyncio's "... exception was never retrieved" (a Task, Future or gather of a failed
    read, finalised by the garbage collector): one damaged file fails every read waiting on
    it, and only the first error is the one raised. asyncio runs only Orbax's reads here."""
    return record.name == "asyncio" and "exception was never retrieved" in str(record.msg)


def _append_leftover(text: str) -> None:
    try:
        with open(_leftovers, "a") as f:
            f.write(text)
    except (OSError, TypeError):
        pass


class _LeftoverRecords(logging.Filter):
    """On the asyncio logger from the first failed restore read on: a read task's late
    report goes to that read's details file (as `_leftover` does for unraisables)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if _leftovers is None or not _abandoned_read(record):
            return True
        _append_leftover(logging.Formatter().format(record) + "\n")
        return False


class _LeftoverStderr:
    """sys.stderr from the first failed restore read on: what threads other than the main one
    write (TensorStore's threads printing `RuntimeError: Event loop is closed` tracebacks
    when a failed read's pending reads finish) goes to that read's details file; the main
    thread's output, the run's own, passes."""

    def __init__(self, real):
        self.real = real

    def write(self, s: str) -> int:
        if threading.current_thread() is threading.main_thread():
            return self.real.write(s)
        _append_leftover(s)
        return len(s)

    def flush(self) -> None:
        self.real.flush()

    def __getattr__(self, name):  # fileno, isatty, encoding, ...
        return getattr(self.real, name)


_leftover_records = _LeftoverRecords()


def _handlers() -> list[logging.Handler]:
    """Where Orbax's (absl's) and asyncio's records end up: the root logger's handlers
    (their streams were fixed when they were made, so the sys.stderr stand-in misses them)."""
    return list(logging.getLogger().handlers)


class _HeldOutput(logging.Filter):
    """A filter (on the `absl` logger, through which Orbax logs, and on the root handlers)
    holding Orbax's ERROR records and other threads' warnings (asyncio's "Task was destroyed
    but it is pending!" of the failed write, say), and a stand-in for sys.stderr holding
    what other threads than `owner` write to it."""

    def __init__(self, stderr, all_threads: bool = False):
        super().__init__()
        self.all_threads = all_threads
        self.lock = threading.Lock()
        self.records: list[logging.LogRecord] = []
        self.text: list[str] = []
        self.real = stderr
        self.owner = threading.get_ident()
        self.details: Optional[str] = None  # after a failure: other threads write here
        self.real_hook = sys.unraisablehook

    # -- logging.Filter
    def filter(self, record: logging.LogRecord) -> bool:
        other_thread = record.thread != self.owner and record.levelno >= logging.WARNING
        if getattr(record, _PASS, False) or not (_from_orbax(record) or _abandoned_read(record) or other_thread):
            return True
        with self.lock:
            if self.details is not None:
                self._append(logging.Formatter().format(record) + "\n")
            elif len(self.records) < 100 and record not in self.records:  # seen by logger and handler
                self.records.append(record)
        return False

    # -- the sys.stderr stand-in
    def write(self, s: str) -> int:
        if threading.get_ident() == self.owner and not self.all_threads:
            return self.real.write(s)
        with self.lock:
            if self.details is not None:
                self._append(s)
            elif sum(map(len, self.text)) < 1_000_000:
                self.text.append(s)
        return len(s)

    def flush(self) -> None:
        self.real.flush()

    # -- the sys.unraisablehook stand-in (any thread: the garbage collector runs in any)
    def unraisable(self, args) -> None:
        if _leftover(args):
            return
        text = _format_unraisable(args)
        with self.lock:
            if self.details is not None:
                self._append(text)
            elif sum(map(len, self.text)) < 1_000_000:
                self.text.append(text)

    def __getattr__(self, name):  # fileno, isatty, encoding, ...
        return getattr(self.real, name)

    def _append(self, s: str) -> None:
        try:
            with open(self.details, "a") as f:
                f.write(s)
        except OSError:
            pass


_held: Optional[_HeldOutput] = None
_install_lock = threading.Lock()


def hold(all_threads: bool = False) -> bool:
    """From now until release() (or for good, after a failed save): what other threads print,
    and unraisable-exception reports, are held back (a save is in flight, or a restore reads).
    all_threads: the calling thread's writes to sys.stderr too (a restore, during which the
    caller prints nothing of its own, while a failed read's callbacks may print from it).
    Returns False when a hold was in place already (then its owner releases it)."""
    global _held
    with _install_lock:
        if _held is not None:
            return False
        _held = _HeldOutput(sys.stderr, all_threads)
        logging.getLogger("absl").addFilter(_held)
        for handler in _handlers():
            handler.addFilter(_held)
        sys.stderr = _held
        sys.unraisablehook = _held.unraisable
        return True


def _uninstall() -> Optional[_HeldOutput]:
    global _held
    with _install_lock:
        held, _held = _held, None
        if held is None:
            return None
        logging.getLogger("absl").removeFilter(held)
        for handler in _handlers():
            handler.removeFilter(held)
        if sys.stderr is held:
            sys.stderr = held.real
        if sys.unraisablehook == held.unraisable:
            sys.unraisablehook = held.real_hook
        return held


def release() -> None:
    """The save (or read) went well: print what was held, as it was (it was not about a
    failure), and stop holding."""
    held = _uninstall()
    if held is None:
        return
    with held.lock:
        records, text = held.records, held.text
        held.records, held.text = [], []
    for record in records:
        setattr(record, _PASS, True)
        logging.getLogger(record.name).handle(record)
    if text:
        held.real.write("".join(text))


def _held_text(held: _HeldOutput) -> str:
    """What `held` holds, as text (log records formatted, then the raw output); call with
    held.lock taken."""
    fmt = logging.Formatter()
    return "".join(fmt.format(r) + "\n" for r in held.records) + "".join(held.text)


def _write_temp(prefix: str, text: str) -> Optional[str]:
    """`text` in a new file in the temp folder (the workdir's disk may be the full one);
    its path, or None if it could not be written."""
    fd, path = -1, None
    try:
        fd, path = tempfile.mkstemp(prefix=prefix, suffix=".log")
        with os.fdopen(fd, "w") as f:
            fd = -1
            f.write(text)
        return path
    except OSError:
        if fd >= 0:
            os.close(fd)
        return None


def write_details(error: BaseException) -> Optional[str]:
    """A save failed with `error`: writes what was held and its traceback to a file in the
    temp folder, where the save's threads go on writing; returns its path, or None if it
    could not be written."""
    trace = "".join(traceback.format_exception(error))
    if _held is None:
        return _write_temp("jaxmodels-save-failed-", trace)
    with _held.lock:
        path = _write_temp("jaxmodels-save-failed-", _held_text(_held) + trace)
        if path is not None:
            _held.records, _held.text, _held.details = [], [], path
        return path


def drop(error_text: str) -> Optional[str]:
    """A restore's read failed and the caller falls back to another checkpoint: collects the
    read's garbage now (its coroutines' `Exception ignored` reports land in the hold; the
    caller must hold no reference to the error any more, hence its text), writes what was
    held and `error_text` to a details file in the temp folder, and stops holding without
    printing any of it. Returns the file's path (None if it could not be written or nothing
    was held)."""
    global _leftovers
    held = _held
    if held is None:
        return None
    gc.collect()
    with held.lock:
        text = _held_text(held)
        held.records, held.text = [], []
    path = _write_temp("jaxmodels-restore-failed-", text + error_text)
    if path is not None:
        # Hand over before the hold ends: the read's threads may print at any moment.
        _leftovers = path
        logging.getLogger("asyncio").addFilter(_leftover_records)  # once: a filter is added only once
        if held.real_hook is sys.__unraisablehook__:
            held.real_hook = _unraisable_hook
        if not isinstance(held.real, _LeftoverStderr):
            held.real = _LeftoverStderr(held.real)
    _uninstall()
    with held.lock:
        late = _held_text(held)
    if late and path is not None:
        _append_leftover(late)
    return path


def redirect_stderr_to(path: Optional[str]) -> None:
    """From now on the process's stderr (file descriptor 2, so also threads and interpreter
    exit) appends to `path` (or is discarded when path is None). For a command that has
    printed its one-line error and is about to exit: a failed save's threads may still be
    finishing, and what they print belongs with the details, not after the error."""
    try:
        sys.stderr.flush()
        target = os.open(path or os.devnull, os.O_WRONLY | os.O_APPEND | (os.O_CREAT if path else 0))
        os.dup2(target, 2)
        os.close(target)
    except OSError:
        pass
