"""SIGTERM/SIGINT as a flag the trainer polls, so a stop always ends in a clean exit.

A Ctrl-C raised as KeyboardInterrupt in the middle of an import or an XLA compile left
half-initialised extensions (ImportError tracebacks, segfaults at exit), and some imported
library swallowed it (the run then trained to the end). So launch.train installs a flag
handler as its very first statement (this module imports only the standard library), and
train() takes over any signal caught before it started. A second Ctrl-C still raises
KeyboardInterrupt: stop without waiting for the save.
"""
from __future__ import annotations

import signal
import threading
from typing import Optional

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopFlag:
    def __init__(self):
        self.signal: Optional[int] = None
        self.previous: dict = {}

    def install(self) -> "StopFlag":
        if threading.current_thread() is not threading.main_thread():
            return self  # signal handlers can only be set from the main thread
        for sig in SIGNALS:
            prev = signal.signal(sig, self._handle)
            self.previous[sig] = prev
            owner = getattr(prev, "__self__", None)
            if isinstance(owner, StopFlag) and owner.signal is not None and self.signal is None:
                self.signal = owner.signal  # caught before train() started: honour it
        return self

    def _handle(self, signum, frame):
        if self.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop without waiting for the save
        self.signal = signum

    def uninstall(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        self.previous = {}
