"""The registry watcher: a thread that follows the mapping table (and the pins beside it)
and reports changes.

Consul is followed with blocking queries, under the client rules Consul documents: reset the
index when it goes backwards or after an error, never block on an index below 1, rate-limit
the loop, compare data rather than indexes, back off with jitter on errors and keep serving
the last good table meanwhile, and log a fault once rather than on every retry. The local
file registry is simply read on an interval.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Mapping

from daybook.errors import DaybookError, InputError
from daybook.model.mappings import MappingTable
from daybook.model.pins import Pin
from daybook.registry.base import Registry, Snapshot
from master.changes import Change, Fresh, MappingsChanged
from master.pacing import Pacer, backoff_s

log = logging.getLogger(__name__)

# How long one Consul blocking query may wait; also bounds how late a stop is noticed.
WATCH_TIMEOUT_S = 30.0


class TokenBucket:
    """At most `burst` calls at once, refilled at one per `interval_s`."""

    def __init__(
        self,
        interval_s: float,
        burst: int = 2,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._interval_s = interval_s
        self._burst = float(burst)
        self._tokens = float(burst)
        self._clock = clock
        self._stamp = clock()

    def delay_s(self) -> float:
        """Take a token; return how long to wait before using it (0 when one was ready)."""
        now = self._clock()
        if self._interval_s > 0:
            refill = (now - self._stamp) / self._interval_s
            self._tokens = min(self._burst, self._tokens + refill)
        else:
            self._tokens = self._burst
        self._stamp = now
        self._tokens -= 1.0
        if self._tokens >= 0:
            return 0.0
        return -self._tokens * self._interval_s


class RegistryWatcher:
    """Follows a registry and posts `MappingsChanged` whenever the table or a pin differs.

    Blocking (Consul) watchers learn of a change within moments by themselves; polling
    ones can be asked to `refresh()` now, and post `Fresh("registry")` once they have.
    """

    SOURCE = "registry"

    def __init__(
        self,
        registry: Registry,
        post: Callable[[Change], None],
        *,
        blocking: bool,
        interval_s: float,
        watch_timeout_s: float = WATCH_TIMEOUT_S,
    ) -> None:
        self._registry = registry
        self._post = post
        self._blocking = blocking
        self._interval_s = interval_s
        self._watch_timeout_s = watch_timeout_s
        self._pacer = Pacer()
        self._rng = random.Random()
        self.last: MappingTable | None = None
        self.last_pins: Mapping[str, Pin] | None = None
        self.failures = 0

    @property
    def refreshable(self) -> bool:
        """A blocked Consul query cannot be cut short, nor does it need to be."""
        return not self._blocking

    def refresh(self) -> None:
        self._pacer.refresh()

    def stop(self) -> None:
        self._pacer.stop()

    def run(self) -> None:
        index = 0
        bucket = TokenBucket(self._interval_s)
        while not self._pacer.stopped:
            refresh = self._pacer.take_refresh()
            try:
                snapshot = self._fetch(index)
            except Exception as exc:  # a watcher thread must outlive any backend failure
                self._failed(exc)
                index = 0  # the first call after recovery answers at once
                if refresh:  # as fresh as it gets: the last known mappings stand
                    self._post(Fresh(self.SOURCE))
                self._pacer.pause(backoff_s(self.failures, self._rng))
                continue
            self._recovered()
            # An index going backwards (a restore, reaped tombstones, a restarted server)
            # means start over; Consul's indexes are at least 1 once answered.
            index = 0 if snapshot.index < index else max(snapshot.index, 1)
            if snapshot.mappings != self.last or snapshot.pins != self.last_pins:
                self.last, self.last_pins = snapshot.mappings, snapshot.pins
                self._post(MappingsChanged(snapshot.mappings, snapshot.pins))
            if refresh:
                self._post(Fresh(self.SOURCE))
            self._pacer.pause(bucket.delay_s() if self._blocking else self._interval_s)

    def _fetch(self, index: int) -> Snapshot:
        if self._blocking:
            return self._registry.watch(index, self._watch_timeout_s)
        return self._registry.read()

    def _failed(self, exc: Exception) -> None:
        self.failures += 1
        if isinstance(exc, InputError):
            # Consul refused the request itself (a 400: a namespace on open-source Consul,
            # a key its version rejects): no retry fixes that, an operator must. Said every
            # time, at the backoff's pace, so it is not lost in the log.
            log.error(
                "the registry %s refuses the mappings request: %s; keeping the last known "
                "mappings until the configuration is fixed",
                self._registry.url,
                exc,
            )
            return
        if self.failures == 1:
            log.warning(
                "cannot read the mappings from %s: %s; keeping the last known mappings and "
                "retrying",
                self._registry.url,
                exc,
                # An unexpected exception is a bug worth a traceback; a backend fault is not.
                exc_info=not isinstance(exc, DaybookError | OSError),
            )
        else:
            log.debug("registry %s still failing: %s", self._registry.url, exc)

    def _recovered(self) -> None:
        if self.failures:
            log.warning(
                "the mappings at %s are readable again after %d failure(s)",
                self._registry.url,
                self.failures,
            )
            self.failures = 0
