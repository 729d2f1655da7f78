"""The master loop's timers: named due times on the monotonic clock, and what each runs."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from daybook.backoff import backoff_s

log = logging.getLogger(__name__)

# What a timer runs, given the monotonic time of the pass that found it due.
Action = Callable[[float], None]

# A timer that failed runs again after this, doubling per failure in a row up to the cap:
# soon enough that a passing fault (a full disk, a locked database) costs seconds, sparse
# enough that a lasting one logs a traceback a minute rather than one a pass.
RETRY_START_S = 1.0
RETRY_MAX_S = 60.0


@dataclass(slots=True)
class _Timer:
    action: Action
    due: float | None
    wakes: Callable[[], bool] | None
    # Failures in a row, for the retry's backoff.
    failures: int = 0


class Scheduler:
    """Named one-shot timers. A timer that repeats sets its next due time when it runs.

    When several are due in one pass they run in the order they were added: the loop adds
    them in the order their effects must follow one another. Each timer's due time is read
    as the pass reaches it, so a timer that an earlier one cancelled does not run.

    A timer added with `wakes` counts for `next_due` only while `wakes()` holds; otherwise
    it waits for a pass the loop makes for something else, and costs an idle loop nothing.

    A timer whose action raises is logged and tried again after a backoff, unless the
    action set its next due time before it raised; the other timers of the pass still run.
    The master outlives a fault in one periodic task (a full disk failing the results
    database's commit) instead of leaving every minion without it; `failed` hears of each.
    """

    def __init__(self, *, failed: Callable[[str], None] | None = None) -> None:
        self._timers: dict[str, _Timer] = {}
        self._failed = failed

    def add(
        self,
        name: str,
        action: Action,
        *,
        due: float | None = None,
        wakes: Callable[[], bool] | None = None,
    ) -> None:
        if name in self._timers:
            raise ValueError(f"a timer named {name!r} exists already")
        self._timers[name] = _Timer(action, due, wakes)

    def due(self, name: str) -> float | None:
        return self._timers[name].due

    def at(self, name: str, due: float | None) -> None:
        """Run `name` at `due` (None: not at all), whenever it was due before."""
        self._timers[name].due = due

    def no_later_than(self, name: str, due: float) -> None:
        """Run `name` at `due`, or sooner if it is due sooner already."""
        timer = self._timers[name]
        if timer.due is None or due < timer.due:
            timer.due = due

    def cancel(self, name: str) -> None:
        self._timers[name].due = None

    def next_due(self) -> float | None:
        """The earliest due time that should wake the loop; None if none should."""
        return min(
            (
                timer.due
                for timer in self._timers.values()
                if timer.due is not None and (timer.wakes is None or timer.wakes())
            ),
            default=None,
        )

    def run_due(self, now: float) -> None:
        """Run every timer due at `now`, in the order they were added; each runs once and
        is not due again unless it (or anyone) sets it again."""
        for name, timer in self._timers.items():
            if timer.due is not None and now >= timer.due:
                timer.due = None
                try:
                    timer.action(now)
                except Exception:  # one failing task must not stop the master's loop
                    self._retry(name, timer, now)
                else:
                    timer.failures = 0

    def _retry(self, name: str, timer: _Timer, now: float) -> None:
        timer.failures += 1
        if timer.due is None:
            timer.due = now + backoff_s(timer.failures, start_s=RETRY_START_S, max_s=RETRY_MAX_S)
        log.exception(
            "the master's %s task failed (%d in a row); it runs again in %.1f s",
            name,
            timer.failures,
            max(0.0, timer.due - now),
        )
        if self._failed is not None:
            self._failed(name)
