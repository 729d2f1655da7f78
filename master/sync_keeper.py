"""The sync keeper: starts syncs, and ends the ones that wait in vain."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable

from daybook.model.sync import Sync
from master.database import ResultsDatabase
from master.ledger import Fleet, SyncBook
from master.metrics import MasterMetrics
from master.scheduler import Scheduler
from master.tuning import MasterTuning
from master.view_publisher import ViewPublisher

log = logging.getLogger(__name__)

ALL_HOSTS = "*"
# The timers that close ended syncs, and the database's open syncs nobody holds any more.
CLOSE_CHECK = "close-check"
SWEEP = "sweep"


class SyncKeeper:
    """Each new sync goes into the book, the database and the metrics, expecting the live
    hosts its target matches. A sync ends when every expected host has answered (the
    results recorder sees that) or when it waits in vain: its deadline passed, or every
    host it still waits for is down. This closes those."""

    def __init__(
        self,
        *,
        book: SyncBook,
        database: ResultsDatabase,
        fleet: Fleet,
        metrics: MasterMetrics,
        view: ViewPublisher,
        scheduler: Scheduler,
        tuning: MasterTuning,
        clock: Callable[[], float],
        monotonic: Callable[[], float],
    ) -> None:
        self._book = book
        self._db = database
        self._fleet = fleet
        self._metrics = metrics
        self._view = view
        self._scheduler = scheduler
        self._tuning = tuning
        self._clock = clock
        self._monotonic = monotonic

    def restore(self) -> None:
        """Hold the latest syncs again, as a restarted master: reports may still come."""
        book = self._book
        for sync, answered in self._db.recent_answers(book.capacity, book.max_results):
            book.add(sync, answered)

    def start(
        self,
        target: str,
        origin: str,
        request_id: str | None,
        deadline_s: float = 0.0,
        hosts: tuple[str, ...] | None = None,
    ) -> Sync:
        """A sync of the live hosts `target` matches; with `hosts`, addressed to those
        only, and expecting each of them (one that is down counts as silent)."""
        now = self._clock()
        expected = self._fleet.expected_for(target, now) if hosts is None else hosts
        sync = Sync(
            sync_id=uuid.uuid4().hex,
            target=target,
            origin=origin,
            issued_at=now,
            expected=expected,
            request_id=request_id,
            deadline=now + (deadline_s or self._tuning.sync_deadline_s),
            # No live host matches: nobody to wait for, so it is over as it starts.
            closed_at=None if expected else now,
            hosts=hosts,
        )
        self._db.add_sync(sync)
        self._book.add(sync)
        self._metrics.sync_started(origin)
        if not sync.expected:
            self._metrics.sync_completed(ok=True)
        self._scheduler.no_later_than(CLOSE_CHECK, self._monotonic())
        self._view.changed()
        return sync

    def find(self, sync_id: str) -> Sync | None:
        """A sync held in the book, or else from the database."""
        return self._book.get(sync_id) or self._db.load_sync(sync_id)

    def find_request(self, request_id: str) -> Sync | None:
        """The sync an operator request started, so that its retry starts no other."""
        held = self._book.by_request(request_id)
        if held is not None:
            return self.find(held)
        sync = self._db.sync_for_request(request_id)
        if sync is not None:
            self._book.add(sync)
        return sync

    def has_open_syncs(self) -> bool:
        return bool(self._book.open_syncs())

    def close_ended(self, mono: float) -> bool:
        """Close the syncs that wait in vain, and check again when the nearest deadline
        falls, or a second from now. True if any was closed."""
        now = self._clock()
        closed = self._book.close_due(now, lambda host: self._fleet.down_since(host, now))
        for sync in closed:
            self._db.close_sync(sync)
            self._metrics.sync_incomplete()
            log.info(
                "sync %s ended incomplete: no answer from %s",
                sync.sync_id,
                ", ".join(sorted(sync.silent)),
            )
            self._view.changed()
        self._db.commit()
        nearest = self._book.nearest_deadline()
        wait_s = self._tuning.close_check_interval_s
        if nearest is not None:
            wait_s = min(wait_s, max(0.0, nearest - now))
        self._scheduler.at(CLOSE_CHECK, mono + wait_s)
        return bool(closed)

    def sweep(self, mono: float) -> None:
        """Close the database's open syncs that the book no longer holds."""
        self._scheduler.at(SWEEP, mono + self._tuning.forgotten_sweep_interval_s)
        forgotten = self._db.close_forgotten(self._clock(), self._book.open_syncs())
        self._db.commit()
        if forgotten:
            log.info("closed %d earlier sync(s) nobody was waiting on any more", forgotten)
