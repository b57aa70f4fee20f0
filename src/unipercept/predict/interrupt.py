"""Ctrl-C between frames: a SIGINT that arrives while a frame is processed waits until the frame
is done, so that the saved session (or, for a live source, the predictions so far) is whole."""

from __future__ import annotations

import signal
import threading
from typing import Any


class InterruptBetweenFrames:
    """Holds a Ctrl-C (SIGINT) until the frame being processed is done: :attr:`requested` turns
    True and the frame loop stops at its next check; a second Ctrl-C stops at once
    (KeyboardInterrupt). Only in the main thread (where Python delivers signals); elsewhere it
    changes nothing and Ctrl-C raises KeyboardInterrupt as usual."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def __enter__(self) -> InterruptBetweenFrames:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._hold)
        return self

    def _hold(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc_info: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
