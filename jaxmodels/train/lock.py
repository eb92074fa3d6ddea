"""One training process per workdir: an exclusive lock on workdir/train.lock.

Two trainers on one workdir would interleave metrics lines and overwrite each other's
checkpoints, so the second is refused, naming the holder. The lock is an OS file lock
(fcntl.flock): the kernel drops it when its process ends in any way, kill -9 included, so a
lock left by a dead run never blocks the next one; the file's content (pid, host, start
time) only names the holder in messages and tells a take-over from a first start.
Readers (launch.sample / generate / evaluate) never take it.
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from typing import Optional

from jaxmodels.config import ConfigError

LOCK_NAME = "train.lock"


class WorkdirLockedError(ConfigError):
    """Another live process is training in this workdir."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def _read_holder(fd: int) -> dict:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        return json.loads(os.read(fd, 4096).decode("utf-8") or "{}")
    except (OSError, ValueError):
        return {}


def describe(holder: dict) -> str:
    if not holder:
        return "an unknown process"
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(holder.get("time", 0))))
    return f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')} (started {started})"


class WorkdirLock:
    """Context manager: holds the workdir's lock for the run's life; released on any exit."""

    def __init__(self, workdir: str):
        self.workdir = os.path.abspath(workdir)
        self.path = os.path.join(self.workdir, LOCK_NAME)
        self.fd: Optional[int] = None
        self.took_over: Optional[dict] = None

    def acquire(self) -> "WorkdirLock":
        os.makedirs(self.workdir, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)  # not inherited by exec'd children
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            note = ""
            if holder.get("host") == socket.gethostname() and not _pid_alive(int(holder.get("pid", -1))):
                note = (" That process has exited, but a child it started (a data worker?) still holds "
                        "the lock: end it first.")
            raise WorkdirLockedError(
                f"workdir {self.workdir} is in use by another training run: {describe(holder)}.{note} "
                f"Wait for it to finish, stop it, or pass another --workdir.") from None
        previous = _read_holder(fd)
        if previous and previous.get("pid") != os.getpid():
            # The lock file names a process, but nobody holds the lock: that run died.
            self.took_over = previous
            print(f"taking over the lock of a run that no longer holds it: {describe(previous)}", flush=True)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "time": time.time()}
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, json.dumps(me).encode("utf-8"))
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            os.ftruncate(self.fd, 0)  # an empty file: the run ended normally, nothing to take over
            fcntl.flock(self.fd, fcntl.LOCK_UN)
        finally:
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> "WorkdirLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
