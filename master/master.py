"""The master loop: one thread owns the sockets and turns changes, reports and operator
requests into sync events, database records and answers."""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

import zmq

from daybook import wire
from daybook.mailbox import Mailbox
from daybook.model.mappings import MappingTable
from daybook.model.messages import (
    OP_STATUS,
    OP_SYNC,
    OP_SYNC_RESULT,
    ControlReply,
    ControlRequest,
    Heartbeat,
    SyncEvent,
)
from daybook.model.results import Report
from daybook.model.state import DesiredState, EncodedState
from daybook.model.sync import RUNNING, Sync
from daybook.net.transport import Peer
from daybook.stopping import StopFlag
from master.access import ACCESS_OPS, Access
from master.changes import Change, DigestsChanged, Fresh, MappingsChanged
from master.collector import Collector
from master.control_server import ControlServer, Route
from master.database import ResultsDatabase
from master.fleet import Fleet, SyncBook, Waiter
from master.metrics import MasterMetrics
from master.publisher import Publisher
from master.snapshot import FleetSnapshot, SnapshotBox

log = logging.getLogger(__name__)

ALL_HOSTS = "*"


@dataclass(frozen=True)
class MasterTuning:
    """Timing knobs of the loop; the settings provide the first, the rest rarely change."""

    republish_interval_s: float = 30.0
    # An automatic sync stops waiting for answers this long after it was issued: a little
    # over a republish, which gives every live minion a second chance to hear of it.
    sync_deadline_s: float = 40.0
    # How often open syncs are checked for hosts that went down (deadlines are met exactly),
    # and the database for open syncs nobody holds any more.
    close_check_interval_s: float = 1.0
    forgotten_sweep_interval_s: float = 30.0
    # Changes arriving this close together make one sync.
    coalesce_s: float = 0.05
    # At start, wait this long for both watchers before publishing a state built from one.
    startup_grace_s: float = 3.0
    # A minion that shows up behind gets a republish this soon, but never more often.
    catch_up_delay_s: float = 0.05
    min_republish_gap_s: float = 0.5
    # Unfinished syncs younger than this are republished, at most this many at once.
    unfinished_window_s: float = 600.0
    max_republished_syncs: int = 8
    batch_limit: int = 5000
    host_flush_interval_s: float = 1.0
    keep_syncs: int = 10_000
    prune_interval_s: float = 3600.0
    # An operator sync first has the polling watchers read their sources once more, so
    # `map set ...; sync` syncs the new mapping; but it waits for them no longer than this.
    refresh_timeout_s: float = 2.0
    # The snapshot the HTTP API reads is published this soon after a change, but never
    # more often, nor taking more than a tenth of the loop's time in a large fleet.
    view_interval_s: float = 0.2
    # Heartbeats that only move a host's last-seen time refresh the snapshot this seldom
    # (and at least four times within down_after_s): readers judge liveness at their own
    # clock, so copying a large fleet on every batch of heartbeats would buy nothing.
    heartbeat_view_interval_s: float = 2.0
    # After subscribers are dropped (a key deleted), the state is sent again this soon,
    # once the minions still accepted have reconnected.
    resubscribe_grace_s: float = 0.5
    # With nobody waiting on a sync and nothing published for `busy_window_s`, the results
    # socket is read at most every `quiet_collect_interval_s`: a fleet's heartbeats, sent
    # one by one at their own times, then wake the loop a couple of times a second in
    # batches instead of once each. Answers an operator waits for are read as they come.
    quiet_collect_interval_s: float = 0.5
    busy_window_s: float = 5.0


class Master:
    """Publishes the desired state, records results, and answers operators.

    Everything runs on the thread that calls `run`; watcher threads reach it only through
    the mailbox, so no socket and no database handle is ever shared.
    """

    def __init__(
        self,
        *,
        epoch: int,
        publisher: Publisher,
        collector: Collector,
        control: ControlServer,
        database: ResultsDatabase,
        fleet: Fleet,
        mailbox: Mailbox[Change],
        tuning: MasterTuning,
        refreshers: Mapping[str, Callable[[], None]] | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        metrics: MasterMetrics | None = None,
        snapshots: SnapshotBox | None = None,
        access: Access | None = None,
    ) -> None:
        self.epoch = epoch
        self._publisher = publisher
        self._collector = collector
        self._control = control
        # Who may ask for what; without a key ring, only the local socket may operate.
        self._access = access or Access(None)
        self._db = database
        self._fleet = fleet
        self._syncs = SyncBook()
        self._mailbox = mailbox
        self._tuning = tuning
        self._clock = clock
        self._monotonic = monotonic
        self._seq = 0

        self._mappings: MappingTable | None = None
        self._digests: Mapping[str, str] | None = None
        self._sizes: Mapping[str, Mapping[str, int]] | None = None
        self._fresh: set[str] = set()
        self._state: EncodedState | None = None
        self._state_sync: Sync | None = None
        # Watchers that can be asked to read again, by source name; operator syncs wait
        # in the queue while a refresh round is under way.
        self._refreshers = dict(refreshers or {})
        self._awaiting_fresh: set[str] = set()
        self._refresh_deadline: float | None = None
        self._operator_queue: list[tuple[Route, ControlRequest]] = []

        started = monotonic()
        self._started = started
        self._rebuild_due: float | None = None
        self._catch_up_due: float | None = None
        self._last_republish = -math.inf
        # Answers are read as they come for a while after each event (see MasterTuning).
        self._last_publish = -math.inf
        self._next_results_read = -math.inf
        # A heartbeat read late must never make a host look down: a small share of the time.
        self._quiet_read_interval_s = min(tuning.quiet_collect_interval_s, fleet.down_after_s / 10)
        self._next_republish = started + tuning.republish_interval_s
        self._host_flush_due = started + tuning.host_flush_interval_s
        self._prune_due = started
        self._close_check_due = started
        self._sweep_due = started
        self.counters: dict[str, int] = {
            "reports": 0,
            "duplicate_reports": 0,
            "heartbeats": 0,
            "syncs": 0,
            "operator_requests": 0,
        }

        self._metrics = metrics or MasterMetrics()
        for status in fleet.status(epoch, clock()).hosts.values():
            if status.last_report is not None and status.last_report.ok:
                self._metrics.host_succeeded_before(status.host, status.last_report.finished_at)
        self.snapshots = snapshots or SnapshotBox(self._snapshot())
        self._view_due: float | None = None
        self._view_gap_s = tuning.view_interval_s
        self._last_view = -math.inf
        self._publish_view()

    # -- start and stop -------------------------------------------------------------------------

    def restore(self) -> None:
        """Load the recent syncs and the last desired state, and serve that state at once."""
        self._view_changed()
        for record in self._db.latest_syncs(limit=64):
            self._syncs.add(record)
        stored = self._db.load_state()
        if stored is None:
            return
        state, sync_id = stored
        decoded = wire.decode_state(state)
        self._mappings, self._digests = decoded.mappings, decoded.digests
        self._state = state
        found = self._syncs.get(sync_id) or self._db.load_sync(sync_id)
        if found is None:  # pruned away; keep its id so minions do not report it again
            found = Sync(sync_id, ALL_HOSTS, "auto", self._clock(), ())
            self._db.add_sync(found)
            self._db.commit()
        self._syncs.add(found)
        self._state_sync = found
        log.info("serving the stored desired state (sync %s) until the watchers answer", sync_id)
        self._republish(self._monotonic())

    def run(self, stop: StopFlag) -> None:
        poller = zmq.Poller()
        poller.register(self._collector.socket, zmq.POLLIN)
        poller.register(self._control.socket, zmq.POLLIN)
        poller.register(self._mailbox.fileno(), zmq.POLLIN)
        # The same without the results socket, for the quiet spells between its reads.
        between_reads = zmq.Poller()
        between_reads.register(self._control.socket, zmq.POLLIN)
        between_reads.register(self._mailbox.fileno(), zmq.POLLIN)
        while not stop.is_set():
            read_due = self._results_read_due()
            if read_due is None:
                ready = dict(poller.poll(self._timeout_ms()))
            else:
                ready = dict(between_reads.poll(self._timeout_ms(read_due)))
            if self._mailbox.fileno() in ready:
                for change in self._mailbox.drain():
                    self._on_change(change)
            if self._collector.socket in ready:
                self._next_results_read = self._monotonic() + self._quiet_read_interval_s
                self._collect()
            if self._control.socket in ready:
                self._serve_operators()
            self._run_timers()
        self._drain()

    def _drain(self) -> None:
        """Record what has already arrived and answer everyone waiting, then stop."""
        for route, request in self._operator_queue:
            self._control.reply(
                route, ControlReply(request.request_id, error="the master is stopping")
            )
        self._operator_queue = []
        self._collect()
        self._db.save_hosts(self._fleet.take_dirty())
        self._db.commit()
        for waiter in self._syncs.release_all():
            self._answer_waiter(waiter)

    # -- timers ---------------------------------------------------------------------------------

    def _results_read_due(self) -> float | None:
        """When the results socket may next be read, if that is later than now: only in a
        quiet spell, with no operator waiting and nothing published for a while."""
        mono = self._monotonic()
        if mono >= self._next_results_read or self._syncs.waiters:
            return None
        if mono - self._last_publish < self._tuning.busy_window_s:
            return None
        return self._next_results_read

    def _timeout_ms(self, read_due: float | None = None) -> int:
        dues = [
            read_due,
            self._next_republish,
            self._host_flush_due,
            self._prune_due,
            self._rebuild_due,
            self._catch_up_due,
            self._refresh_deadline,
            self._syncs.next_deadline(),
            self._view_due,
            self._close_check_due if self._syncs.open_syncs() else None,
        ]
        nearest = min(due for due in dues if due is not None)
        return max(0, math.ceil((nearest - self._monotonic()) * 1000))

    def _run_timers(self) -> None:
        mono = self._monotonic()
        if self._refresh_deadline is not None and mono >= self._refresh_deadline:
            log.warning(
                "no fresh read of %s within %g s; syncing with the last known state",
                " and ".join(sorted(self._awaiting_fresh)),
                self._tuning.refresh_timeout_s,
            )
            self._awaiting_fresh.clear()
            self._start_operator_syncs()
        if self._rebuild_due is not None and mono >= self._rebuild_due:
            self._rebuild_due = None
            self._rebuild()
        if mono >= self._next_republish:
            self._republish(mono)
        elif self._catch_up_due is not None and mono >= self._catch_up_due:
            self._catch_up(mono)
        if mono >= self._close_check_due:
            self._close_ended_syncs(mono)
        if self._syncs.next_deadline() is not None:
            for waiter in self._syncs.release(mono):
                self._answer_waiter(waiter)
        if mono >= self._host_flush_due:
            self._host_flush_due = mono + self._tuning.host_flush_interval_s
            dirty = self._fleet.take_dirty()
            if dirty:
                self._db.save_hosts(dirty)
                self._db.commit()
        if mono >= self._prune_due:
            self._prune_due = mono + self._tuning.prune_interval_s
            removed = self._db.prune(self._tuning.keep_syncs)
            self._db.commit()
            if removed:
                log.info("pruned %d old sync(s) from the results database", removed)
        if self._view_due is not None and mono >= self._view_due:
            self._publish_view()

    def _close_ended_syncs(self, mono: float) -> None:
        """Close the syncs that wait in vain (deadline passed, or every host they wait for is
        down), and next check when the nearest deadline falls, or a second from now."""
        now = self._clock()
        for sync in self._syncs.close_due(now, lambda host: self._fleet.down_since(host, now)):
            self._db.close_sync(sync)
            self._metrics.sync_incomplete()
            log.info(
                "sync %s ended incomplete: no answer from %s",
                sync.sync_id,
                ", ".join(sorted(sync.silent)),
            )
            self._view_changed()
        if mono >= self._sweep_due:
            self._sweep_due = mono + self._tuning.forgotten_sweep_interval_s
            if forgotten := self._db.close_forgotten(now, self._syncs.open_syncs()):
                log.info("closed %d earlier sync(s) nobody was waiting on any more", forgotten)
        self._db.commit()
        nearest = self._syncs.nearest_deadline()
        wait_s = self._tuning.close_check_interval_s
        if nearest is not None:
            wait_s = min(wait_s, max(0.0, nearest - now))
        self._close_check_due = mono + wait_s

    # -- the snapshot other threads read --------------------------------------------------------

    def _snapshot(self) -> FleetSnapshot:
        now = self._clock()
        return FleetSnapshot(
            epoch=self.epoch,
            taken_at=now,
            down_after_s=self._fleet.down_after_s,
            hosts=self._fleet.status(self.epoch, now).hosts,
            mappings=self._mappings,
            sizes=self._sizes,
            state_digest=self._state.digest if self._state else None,
            state_sync_id=self._state_sync.sync_id if self._state_sync else None,
        )

    def _view_changed(self, *, lazy: bool = False) -> None:
        """Publish a new snapshot soon; `lazy` when only last-seen times moved."""
        gap = self._view_gap_s
        if lazy:
            lazy_gap = min(self._tuning.heartbeat_view_interval_s, self._fleet.down_after_s / 4)
            gap = max(gap, lazy_gap)
        due = max(self._monotonic(), self._last_view + gap)
        if self._view_due is None or due < self._view_due:
            self._view_due = due

    def _publish_view(self) -> None:
        started = self._monotonic()
        self.snapshots.publish(self._snapshot())
        self._last_view = finished = self._monotonic()
        self._view_due = None
        # Copying a large fleet takes a while: keep that under a tenth of the loop's time.
        self._view_gap_s = max(self._tuning.view_interval_s, 10 * (finished - started))

    # -- desired state and events ---------------------------------------------------------------

    def _on_change(self, change: Change) -> None:
        if isinstance(change, MappingsChanged):
            self._mappings = change.mappings
            self._fresh.add("mappings")
        elif isinstance(change, DigestsChanged):
            self._digests = change.digests
            self._sizes = change.sizes
            self._fresh.add("digests")
        elif isinstance(change, Fresh):
            self._awaiting_fresh.discard(change.source)
            if not self._awaiting_fresh and self._operator_queue:
                self._start_operator_syncs()
            return
        else:
            return
        self._view_changed()
        due = self._monotonic() + self._tuning.coalesce_s
        if len(self._fresh) < 2:
            # One watcher has answered and the other not yet: give it a moment rather than
            # publish a state that mixes fresh and stale halves.
            due = max(due, self._started + self._tuning.startup_grace_s)
        self._rebuild_due = due if self._rebuild_due is None else min(self._rebuild_due, due)

    def _rebuild(self) -> None:
        if self._mappings is None or self._digests is None:
            return
        state = wire.encode_state(DesiredState(self._mappings, self._digests))
        if self._state is not None and state.digest == self._state.digest:
            return
        origin = "startup" if self._state_sync is None else "auto"
        self._state = state
        record = self._new_sync(ALL_HOSTS, origin, request_id=None)
        self._db.save_state(state, record.sync_id)
        self._db.commit()
        self._state_sync = record
        log.info(
            "desired state changed (%d pattern(s), %d service(s)): sync %s to %d host(s)",
            len(self._mappings),
            len(self._digests),
            record.sync_id,
            len(record.expected),
        )
        self._publish(record)

    def _new_sync(
        self, target: str, origin: str, request_id: str | None, deadline_s: float = 0.0
    ) -> Sync:
        now = self._clock()
        expected = self._fleet.expected_for(target, now)
        record = Sync(
            sync_id=uuid.uuid4().hex,
            target=target,
            origin=origin,
            issued_at=now,
            expected=expected,
            request_id=request_id,
            deadline=now + (deadline_s or self._tuning.sync_deadline_s),
            # No live host matches: nobody to wait for, so it is over as it starts.
            closed_at=None if expected else now,
        )
        self._db.add_sync(record)
        self._syncs.add(record)
        self.counters["syncs"] += 1
        self._metrics.sync_started(origin)
        if not record.expected:
            self._metrics.sync_completed(ok=True)
        self._close_check_due = min(self._close_check_due, self._monotonic())
        self._view_changed()
        return record

    def _publish(self, record: Sync) -> None:
        assert self._state is not None
        self._seq += 1
        self._publish_event(
            SyncEvent.carrying(
                self._state,
                epoch=self.epoch,
                seq=self._seq,
                sync_id=record.sync_id,
                target=record.target,
                issued_at=record.issued_at,
            )
        )

    def _publish_event(self, event: SyncEvent) -> None:
        self._publisher.publish(event)
        self._last_publish = self._monotonic()
        self._metrics.add_total(
            self._metrics.published_events, "published_events", self._publisher.published
        )
        self._metrics.add_total(
            self._metrics.published_bytes, "published_bytes", self._publisher.bytes_sent
        )

    def _republish(self, mono: float) -> None:
        """Send the current state again, with every recent sync still missing answers.

        PUB drops events for minions that were not connected at that moment; this is how
        they catch up. The state's own sync goes last, so it is what a minion sees newest.
        """
        self._catch_up_due = None
        self._last_republish = mono
        self._next_republish = mono + self._tuning.republish_interval_s
        if self._state is None or self._state_sync is None:
            return
        now = self._clock()
        unfinished = self._syncs.unfinished(
            now,
            self._tuning.unfinished_window_s,
            self._tuning.max_republished_syncs,
            lambda host: self._fleet.is_up(host, now),
        )
        for record in unfinished:
            if record.sync_id != self._state_sync.sync_id:
                self._publish(record)
        self._publish(self._state_sync)

    def _catch_up(self, mono: float) -> None:
        """Send the current state alone, for minions that just showed up behind.

        Minions starting together share one catch-up; unfinished syncs wait for the next
        periodic republish, which keeps a fleet start-up from multiplying the traffic.
        """
        self._catch_up_due = None
        self._last_republish = mono
        if self._state_sync is not None:
            self._publish(self._state_sync)

    def _catch_up_soon(self) -> None:
        mono = self._monotonic()
        due = max(
            mono + self._tuning.catch_up_delay_s,
            self._last_republish + self._tuning.min_republish_gap_s,
        )
        if self._catch_up_due is None or due < self._catch_up_due:
            self._catch_up_due = due

    # -- reports and heartbeats -----------------------------------------------------------------

    def _collect(self) -> None:
        messages = self._collector.receive_batch(self._tuning.batch_limit)
        self._metrics.add_total(
            self._metrics.invalid_frames.labels("results"),
            "invalid_frames.results",
            self._collector.malformed,
        )
        if not messages:
            return
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
            self.counters["heartbeats"] += heartbeats
            self._metrics.heartbeats.inc(heartbeats)
        self._view_changed(lazy=not news)
        # Commit before answering anyone: an answer never reports what a crash could lose.
        self._db.commit()
        for waiter in self._syncs.release(self._monotonic()):
            self._answer_waiter(waiter)

    def _on_report(self, report: Report, now: float, payload: bytes) -> None:
        if not self._db.add_report(report, received_at=now, payload=payload):
            self.counters["duplicate_reports"] += 1
            self._metrics.duplicate_reports.inc()
            return
        self.counters["reports"] += 1
        self._fleet.reported(report, now)
        filed = self._syncs.record(report, now)
        self._metrics.report_received(
            report,
            latency_s=None if filed is None else now - filed.sync.issued_at,
            sizes=self._sizes or {},
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
        state = self._state
        behind = state is not None and (
            heartbeat.epoch != self.epoch or heartbeat.state_digest != state.digest
        )
        if behind and not heartbeat.busy:
            self._catch_up_soon()
        return restarted or not was_up

    # -- operators ------------------------------------------------------------------------------

    def _serve_operators(self) -> None:
        requests = self._control.receive_batch(self._tuning.batch_limit)
        self._metrics.add_total(
            self._metrics.invalid_frames.labels("control"),
            "invalid_frames.control",
            self._control.malformed,
        )
        if requests:  # a key accepted or deleted changes who is up
            self._view_changed()
        for route, request, peer in requests:
            self.counters["operator_requests"] += 1
            self._metrics.operator_requests.inc()
            try:
                self._handle(route, request, peer)
            except Exception as exc:  # one bad request must not stop the master
                log.exception("operator request %s failed", request.op)
                self._control.reply(
                    route, ControlReply(request.request_id, error=f"internal error: {exc}")
                )

    def _handle(self, route: Route, request: ControlRequest, peer: Peer) -> None:
        # Checked on every request: a CURVE session is authenticated once, when it starts,
        # and the key's standing may have changed since.
        refusal = self._access.refusal(request, peer)
        if refusal is not None:
            self._control.reply(route, ControlReply(request.request_id, error=refusal))
            return
        if request.op in ACCESS_OPS:
            answer = self._access.answer(request, peer)
            self._control.reply(route, answer.reply)
            if answer.cut_off:
                self._cut_off(answer.host)
            return
        if request.op == OP_STATUS:
            status = self._fleet.status(self.epoch, self._clock())
            status = replace(status, syncs=tuple(self._syncs))
            self._control.reply(route, ControlReply(request.request_id, status=status))
            return
        if request.op == OP_SYNC:
            record = self._find_request(request.request_id)
            if record is not None:  # a retry of a request that already started its sync
                self._answer_or_wait(route, request, record)
                return
            self._queue_operator_sync(route, request)
            return
        if request.op == OP_SYNC_RESULT:
            assert request.sync_id is not None
            record = self._syncs.get(request.sync_id) or self._db.load_sync(request.sync_id)
            if record is None:
                self._control.reply(
                    route,
                    ControlReply(request.request_id, error=f"unknown sync id {request.sync_id}"),
                )
                return
            self._syncs.add(record)
            self._answer_or_wait(route, request, record)
            return
        self._control.reply(
            route, ControlReply(request.request_id, error=f"operation {request.op} is refused")
        )

    def _cut_off(self, host: str | None) -> None:
        """A minion's key lost its standing: no event reaches it from now on, and no sync
        waits for it. (Its reports and heartbeats are already dropped: the collector checks
        every message's key.) The others reconnect; a republish soon after catches them up."""
        self._publisher.drop_subscribers()
        if host is not None:
            self._fleet.cut_off(host)
            self._view_changed()
        self._catch_up_due = self._monotonic() + self._tuning.resubscribe_grace_s
        log.warning("cut off %s: its key is no longer accepted", host or "a minion")

    def _queue_operator_sync(self, route: Route, request: ControlRequest) -> None:
        """Start a refresh round (unless one is under way) and sync once it is over."""
        queued = [r for r in self._operator_queue if r[1].request_id != request.request_id]
        self._operator_queue = [*queued, (route, request)]  # a retry takes the newest route
        if not self._awaiting_fresh:
            self._awaiting_fresh = set(self._refreshers)
            self._refresh_deadline = self._monotonic() + self._tuning.refresh_timeout_s
            for refresh in self._refreshers.values():
                refresh()
        if not self._awaiting_fresh:
            self._start_operator_syncs()

    def _start_operator_syncs(self) -> None:
        self._refresh_deadline = None
        if self._rebuild_due is not None:  # what the refresh found goes out first
            self._rebuild_due = None
            self._rebuild()
        queue, self._operator_queue = self._operator_queue, []
        for route, request in queue:
            if self._state is None:
                self._control.reply(
                    route,
                    ControlReply(
                        request.request_id,
                        error="the master has not read the mappings and the store yet; "
                        "try again in a moment",
                    ),
                )
                continue
            record = self._new_sync(
                request.target or ALL_HOSTS, "operator", request.request_id, request.deadline_s
            )
            self._db.commit()
            log.info(
                "operator sync %s to %s: expecting %d host(s)",
                record.sync_id,
                record.target,
                len(record.expected),
            )
            self._publish(record)
            self._answer_or_wait(route, request, record)

    def _find_request(self, request_id: str) -> Sync | None:
        """A retried operator request finds the sync its first attempt started."""
        record = self._syncs.by_request(request_id)
        if record is None:
            record = self._db.sync_for_request(request_id)
            if record is not None:
                self._syncs.add(record)
        return record

    def _answer_or_wait(self, route: Route, request: ControlRequest, record: Sync) -> None:
        current = self._syncs.get(record.sync_id) or record
        if request.wait_s > 0 and current.state == RUNNING:
            deadline = self._monotonic() + request.wait_s
            self._syncs.wait(Waiter(record.sync_id, request.request_id, route, deadline))
            return
        self._control.reply(route, ControlReply(request.request_id, sync=current))

    def _answer_waiter(self, waiter: Waiter) -> None:
        record = self._syncs.get(waiter.sync_id) or self._db.load_sync(waiter.sync_id)
        if record is None:
            reply = ControlReply(waiter.request_id, error=f"unknown sync id {waiter.sync_id}")
        else:
            reply = ControlReply(waiter.request_id, sync=record)
        self._control.reply(waiter.route, reply)

    # -- introspection --------------------------------------------------------------------------

    def metrics(self) -> dict[str, float]:
        return {
            **{name: float(value) for name, value in self.counters.items()},
            "events_published": float(self._publisher.published),
            "event_bytes_published": float(self._publisher.bytes_sent),
            "malformed_minion_frames": float(self._collector.malformed),
            "malformed_operator_frames": float(self._control.malformed),
            "impostor_minion_frames": float(self._collector.impostors),
            "refused_operator_requests": float(self._access.refused),
            "hosts_known": float(len(self._fleet)),
            "hosts_up": float(len(self._fleet.live_hosts(self._clock()))),
            "epoch": float(self.epoch),
            "seq": float(self._seq),
        }
