"""The results recorder: files what minions send on the results socket.

A report goes into the database (once: a report resent is recognised by its id), under its
sync in the book, and into the host's status; a heartbeat into the host's status, and a
minion behind the current state is caught up.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import NamedTuple

from daybook.model.messages import Heartbeat
from daybook.model.results import Report
from master.collector import Collector
from master.database import ResultsDatabase
from master.desired_state import DesiredStateKeeper
from master.ledger import Fleet, SyncBook
from master.metrics import MasterMetrics
from master.served import Served
from master.view_publisher import ViewPublisher

log = logging.getLogger(__name__)


class Collected(NamedTuple):
    """What one read of the results socket recorded."""

    messages: int
    reports: int


class ResultsRecorder:
    def __init__(
        self,
        *,
        collector: Collector,
        database: ResultsDatabase,
        fleet: Fleet,
        book: SyncBook,
        served: Served,
        desired: DesiredStateKeeper,
        view: ViewPublisher,
        metrics: MasterMetrics,
        batch_limit: int,
        clock: Callable[[], float],
    ) -> None:
        self._collector = collector
        self._db = database
        self._fleet = fleet
        self._book = book
        self._served = served
        self._desired = desired
        self._view = view
        self._metrics = metrics
        self._batch_limit = batch_limit
        self._clock = clock
        # Successes recorded before this master started; the status's epoch is not read.
        for status in fleet.status(epoch=0, now=clock()).hosts.values():
            if status.last_report is not None and status.last_report.ok:
                metrics.host_succeeded_before(status.host, status.last_report.finished_at)

    def collect(self) -> Collected:
        """Record what is waiting on the results socket, up to `batch_limit` messages, and
        commit it. Says how many were recorded: any (operators waiting on a sync may have
        their answer), or the whole limit (more may be waiting); and how many were reports."""
        messages = self._collector.receive_batch(self._batch_limit)
        self._count_dropped()
        if not messages:
            return Collected(0, 0)
        now = self._clock()
        news = False
        heartbeats = 0
        for message, payload in messages:
            if isinstance(message, Report):
                self._on_report(message, now, payload)
                news = True
            else:
                heartbeats += 1
                news = self._on_heartbeat(message, now) or news
        if heartbeats:
            self._metrics.heartbeats.inc(heartbeats)
        self._view.changed(lazy=not news)
        # Commit before answering anyone: an answer never reports what a crash could lose.
        self._db.commit()
        return Collected(len(messages), len(messages) - heartbeats)

    def _count_dropped(self) -> None:
        metrics, collector = self._metrics, self._collector
        metrics.add_total(
            metrics.invalid_frames.labels("results"), "invalid_frames.results", collector.malformed
        )
        metrics.add_total(metrics.impostor_frames, "impostor_frames", collector.impostors)

    def _on_report(self, report: Report, now: float, payload: bytes) -> None:
        if not self._db.add_report(report, received_at=now, payload=payload):
            self._metrics.duplicate_reports.inc()
            return
        self._fleet.reported(report, now)
        filed = self._book.record(report, now, payload)
        self._metrics.report_received(
            report,
            latency_s=None if filed is None else now - filed.sync.issued_at,
            sizes=self._served.sizes or {},
        )
        if filed is not None and filed.completed:
            self._db.close_sync(filed.sync)
            self._metrics.sync_completed(ok=filed.after.ok)
        log.debug("report from %s for sync %s: ok=%s", report.host, report.sync_id, report.ok)

    def _on_heartbeat(self, heartbeat: Heartbeat, now: float) -> bool:
        """Record a heartbeat; True when it changes more than the host's last-seen time."""
        was_up = self._fleet.is_up(heartbeat.host, now)
        restarted = self._fleet.heard(heartbeat, now)
        if restarted:
            log.info("minion %s is up (boot %s)", heartbeat.host, heartbeat.boot_id)
        self._desired.heard(heartbeat)
        return restarted or not was_up
