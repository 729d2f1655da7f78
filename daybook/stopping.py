"""Stopping a process's loop: signals set a flag, and the flag wakes the loop's poller."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from types import FrameType


class StopFlag:
    """A stop request. Setting it wakes whatever waits: `wait()` callers and, through the
    callbacks given to `on_set`, poller loops (so they need no polling timeout)."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._wakers: list[Callable[[], None]] = []

    def on_set(self, wake: Callable[[], None]) -> None:
        self._wakers.append(wake)
        if self._event.is_set():
            wake()

    def set(self) -> None:
        self._event.set()
        for wake in list(self._wakers):
            wake()

    def is_set(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout_s: float | None = None) -> bool:
        return self._event.wait(timeout_s)


def stop_on_signals(stop: StopFlag) -> Callable[[], None]:
    """Make SIGTERM and SIGINT set `stop`; return a function restoring the previous
    handlers. Outside the main thread (tests running a process in a thread), does nothing."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def handle(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGTERM, signal.SIGINT)}

    def restore() -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    return restore
