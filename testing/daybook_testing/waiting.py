"""Waiting on a condition, polled against a deadline, never a blind sleep."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

# Generous: a deadline only decides how long a failing run takes to say so.
DEADLINE_S = 30.0
POLL_S = 0.02


def wait_for(
    condition: Callable[[], T | None],
    what: str,
    timeout_s: float = DEADLINE_S,
    *,
    error: type[Exception] = AssertionError,
    poll_s: float = POLL_S,
) -> T:
    """Poll `condition` until it returns something true, and return that; raise `error`
    naming `what` was awaited once `timeout_s` has passed."""
    deadline = time.monotonic() + timeout_s
    pause = threading.Event()
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise error(f"timed out after {timeout_s:g} s waiting for {what}")
        pause.wait(poll_s)
