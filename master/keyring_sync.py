"""The threads that keep the key ring and its shared store in step: one writes this
master's notes (new pending keys, bindings, times seen), one follows the other masters'
changes with a watch on the store.

Both run apart from the gatekeeper, so a handshake never waits on Consul: the ZAP handler
reads and changes the ring in memory only.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable

from daybook.errors import DaybookError, InputError
from daybook.registry.keystore import KeyStore
from master.keyring import KeyRing
from master.pacing import Pacer, backoff_s
from master.registry_watcher import TokenBucket

log = logging.getLogger(__name__)

# A burst of handshakes is written together this soon after its first change, so a
# restart of many minions costs one round of writes, not one per handshake.
FLUSH_INTERVAL_S = 0.5
# Notes alone (a key seen again: its time and address) wait this long, or until a change
# that matters comes to go with them. Every write wakes every master's watch, which reads
# the whole ring back: with 10,000 minions saying hello every two minutes, notes written
# as they came would keep each master reading 10,000 keys as often as its pacing allows.
NOTES_FLUSH_INTERVAL_S = 60.0
# How long one blocking query on the store may wait; also bounds how late a stop is noticed.
WATCH_TIMEOUT_S = 30.0
# Watch rounds at most this often in steady state (Consul's rule: rate-limit the loop).
WATCH_INTERVAL_S = 0.1
# And at most this share of a core: each answer holds the whole ring (about 10 ms of this
# thread's CPU a thousand keys), and while keys are being written, as in the handshake
# storm after a restart, every write wakes the watch. Unpaced, 9,000 keys cost the master
# a whole core just to read back what it wrote.
WATCH_CPU_SHARE = 0.1


class KeyRingWriter:
    """Writes the ring's unsaved changes to its store, FLUSH_INTERVAL_S after the first
    of them (NOTES_FLUSH_INTERVAL_S while they are only notes); after a failure, again with
    backoff until the store takes them."""

    def __init__(
        self,
        ring: KeyRing,
        *,
        flush_interval_s: float = FLUSH_INTERVAL_S,
        notes_interval_s: float = NOTES_FLUSH_INTERVAL_S,
    ) -> None:
        self._ring = ring
        self._flush_interval_s = flush_interval_s
        self._notes_interval_s = notes_interval_s
        self._wake = threading.Event()
        self._stopped = threading.Event()
        self._rng = random.Random()
        ring.when_dirty(self._wake.set)

    def stop(self) -> None:
        self._stopped.set()
        self._wake.set()

    def run(self) -> None:
        failures = 0
        try:
            while not self._stopped.is_set():
                self._wake.wait()
                self._hold_notes()
                if self._stopped.wait(self._flush_interval_s):
                    break
                self._wake.clear()
                if self._ring.flush():
                    failures = 0
                    continue
                failures += 1
                self._stopped.wait(backoff_s(failures, self._rng))
                self._wake.set()
        finally:
            self._ring.when_dirty(lambda: None)

    def _hold_notes(self) -> None:
        """While only notes wait, up to `notes_interval_s`, until an urgent change or a
        stop. Each is checked again after the wake-up is cleared: either came before the
        clear and is seen, or after it and wakes the wait."""
        deadline = time.monotonic() + self._notes_interval_s
        while not (self._ring.urgent or self._stopped.is_set()):
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._wake.clear()
            if self._ring.urgent or self._stopped.is_set():
                return
            self._wake.wait(left)


def watch_pause_s(bucket_delay_s: float, round_cpu_s: float) -> float:
    """How long the watcher rests after a round: the rate limit's delay, or long enough
    that rounds costing `round_cpu_s` take at most WATCH_CPU_SHARE of a core."""
    return max(bucket_delay_s, round_cpu_s / WATCH_CPU_SHARE - round_cpu_s)


class KeyRingWatcher:
    """Follows the store with blocking queries (the file store polls) and merges every
    answer into the ring, under Consul's client rules: reset the index when it goes
    backwards or after an error, rate-limit the loop, back off with jitter on errors and
    keep the last known keys meanwhile."""

    def __init__(
        self,
        ring: KeyRing,
        store: KeyStore,
        *,
        watch_timeout_s: float = WATCH_TIMEOUT_S,
        pacer: Pacer | None = None,
        cpu_clock: Callable[[], float] = time.thread_time,
    ) -> None:
        self._ring = ring
        self._store = store
        self._watch_timeout_s = watch_timeout_s
        self._pacer = pacer or Pacer()
        self._rng = random.Random()
        self._cpu_clock = cpu_clock
        self.failures = 0

    def stop(self) -> None:
        self._pacer.stop()

    def run(self) -> None:
        index = 0
        bucket = TokenBucket(WATCH_INTERVAL_S)
        while not self._pacer.stopped:
            # CPU time of this thread alone: the blocking query's wait costs nothing.
            started_cpu_s = self._cpu_clock()
            try:
                snapshot = self._store.watch(index, self._watch_timeout_s)
            except Exception as exc:  # a watcher thread must outlive any backend failure
                self._failed(exc)
                index = 0  # the first call after recovery answers at once
                self._pacer.pause(backoff_s(self.failures, self._rng))
                continue
            if self.failures:
                log.warning("the shared key ring %s is readable again", self._store.url)
                self.failures = 0
            index = 0 if snapshot.index < index else max(snapshot.index, 1)
            changed = self._ring.merge(snapshot)
            if changed:
                log.info("%d key(s) changed in the shared key ring", changed)
            round_cpu_s = self._cpu_clock() - started_cpu_s
            self._pacer.pause(watch_pause_s(bucket.delay_s(), round_cpu_s))

    def _failed(self, exc: Exception) -> None:
        self.failures += 1
        if self.failures == 1 or isinstance(exc, InputError):
            log.warning(
                "cannot read the shared key ring %s: %s; keeping the keys known and retrying",
                self._store.url,
                exc,
                exc_info=not isinstance(exc, DaybookError | OSError),
            )
