"""How the watcher threads pace themselves: interruptible pauses, refresh requests, and
exponential backoff with jitter after errors."""

from __future__ import annotations

import random
import threading

from daybook import backoff

BACKOFF_START_S = 0.25
BACKOFF_MAX_S = 60.0


def backoff_s(failures: int, rng: random.Random) -> float:
    """Double per failure from 0.25 s up to a minute, jittered over the upper half.

    The jitter keeps a fleet of masters (or restarts) from retrying in lockstep.
    """
    return backoff.backoff_s(failures, start_s=BACKOFF_START_S, max_s=BACKOFF_MAX_S, rng=rng)


class Pacer:
    """A watcher's pauses, cut short by `stop()` or `refresh()`.

    `refresh()` asks for one more read now; the watcher takes the request with
    `take_refresh()` as it starts a read, and confirms once that read is done.
    """

    def __init__(self) -> None:
        self._wake = threading.Event()
        self._stopped = threading.Event()
        self._refresh = False

    @property
    def stopped(self) -> bool:
        return self._stopped.is_set()

    def pause(self, seconds: float) -> None:
        if seconds > 0:
            self._wake.wait(seconds)
        self._wake.clear()

    def stop(self) -> None:
        self._stopped.set()
        self._wake.set()

    def refresh(self) -> None:
        self._refresh = True
        self._wake.set()

    def take_refresh(self) -> bool:
        requested, self._refresh = self._refresh, False
        return requested
