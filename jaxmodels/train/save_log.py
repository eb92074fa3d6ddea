"""What a failed checkpoint save prints: one line, not Orbax's background tracebacks.

When a save fails in Orbax's background threads (a full disk, say), Orbax logs the error
with its traceback from each thread that saw it (a few hundred lines), before the training
loop learns of it and reports it as one CheckpointSaveError line. Threads of the abandoned
save can also still print after that line: the last line of a DiT run on a full disk was
once `RuntimeError: Event loop is closed`, from one of them at interpreter exit.

So: while a save is in flight, Orbax's ERROR records are held back (`HeldOrbaxErrors`).
A save that then succeeds releases them as they were (nothing is hidden); a failed save
writes them to a details file that its one-line error names. `redirect_stderr_to` sends
whatever the process still prints after that line to the same file.
"""
from __future__ import annotations

import logging
import os
import sys
import tempfile
import threading
import traceback
from typing import Optional

_PASS = "_jaxmodels_released"  # set on a record released after a good save: let it through


def _from_orbax(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.ERROR and f"{os.sep}orbax{os.sep}" in (record.pathname or "")


class HeldOrbaxErrors(logging.Filter):
    """A filter on the `absl` logger (Orbax logs through absl) that holds Orbax's ERROR
    records instead of printing them."""

    def __init__(self):
        super().__init__()
        self.lock = threading.Lock()
        self.records: list[logging.LogRecord] = []
        self.active = False

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.active or getattr(record, _PASS, False) or not _from_orbax(record):
            return True
        with self.lock:
            if len(self.records) < 100:
                self.records.append(record)
        return False

    def take(self) -> list[logging.LogRecord]:
        with self.lock:
            out, self.records = self.records, []
        return out


_held: Optional[HeldOrbaxErrors] = None
_install_lock = threading.Lock()


def hold() -> None:
    """From now until release(): Orbax's error records are held (a save is in flight)."""
    global _held
    with _install_lock:
        if _held is None:
            _held = HeldOrbaxErrors()
            logging.getLogger("absl").addFilter(_held)
        _held.active = True


def release() -> None:
    """The save went well: print what was held as it was (those records were not about a
    failure) and stop holding."""
    if _held is None:
        return
    _held.active = False
    for record in _held.take():
        setattr(record, _PASS, True)
        logging.getLogger("absl").handle(record)


def write_details(error: BaseException) -> Optional[str]:
    """Writes the held records and `error`'s traceback to a file in the temp folder (the
    workdir's disk may be the full one); returns its path, or None if that failed too."""
    records = _held.take() if _held is not None else []
    fd, path = -1, None
    try:
        fd, path = tempfile.mkstemp(prefix="jaxmodels-save-failed-", suffix=".log")
        with os.fdopen(fd, "w") as f:
            fd = -1
            fmt = logging.Formatter("%(levelname)s %(threadName)s %(pathname)s:%(lineno)d %(message)s")
            for record in records:
                f.write(fmt.format(record) + "\n")
            f.write("".join(traceback.format_exception(error)))
        return path
    except OSError:
        if fd >= 0:
            os.close(fd)
        if path:
            try:
                os.remove(path)
            except OSError:
                pass
        return None


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
