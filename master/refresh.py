"""A refresh round: the polling watchers read their sources once more before operator
syncs start, so `map set ...; sync` syncs the new mapping."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

from master.scheduler import Scheduler

log = logging.getLogger(__name__)

# The timer that ends a round whose watchers have not all answered.
REFRESH = "refresh"


class RefreshRound:
    """Asks every refreshable watcher for a fresh read and waits for each to confirm, but
    no longer than `timeout_s`; the syncs then go out with what is known."""

    def __init__(
        self,
        refreshers: Mapping[str, Callable[[], None]],
        *,
        scheduler: Scheduler,
        timeout_s: float,
        monotonic: Callable[[], float],
    ) -> None:
        # Watchers that can be asked to read again, by source name.
        self._refreshers = dict(refreshers)
        self._scheduler = scheduler
        self._timeout_s = timeout_s
        self._monotonic = monotonic
        self._awaiting: set[str] = set()

    @property
    def under_way(self) -> bool:
        return bool(self._awaiting)

    def start(self) -> None:
        """Ask every watcher to read again, unless a round is under way already."""
        if self._awaiting:
            return
        self._awaiting = set(self._refreshers)
        self._scheduler.at(REFRESH, self._monotonic() + self._timeout_s)
        for refresh in self._refreshers.values():
            refresh()

    def read_again(self, source: str) -> None:
        """Ask the watcher of `source` for a fresh read, outside any round: its change, if
        any, reaches the loop as the poll's would, only sooner."""
        refresh = self._refreshers.get(source)
        if refresh is not None:
            refresh()

    def fresh(self, source: str) -> bool:
        """`source` has read once more; True when no watcher is awaited any more."""
        self._awaiting.discard(source)
        return not self._awaiting

    def give_up(self) -> None:
        """The timeout passed: stop waiting for the watchers that have not answered."""
        log.warning(
            "no fresh read of %s within %g s; syncing with the last known state",
            " and ".join(sorted(self._awaiting)),
            self._timeout_s,
        )
        self._awaiting.clear()

    def end(self) -> None:
        self._scheduler.cancel(REFRESH)
