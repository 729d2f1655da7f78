"""The master loop: one thread owns the sockets; it reads them and the watchers' mailbox,
hands what arrives to the part of the master whose job it is, and runs the timers due."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping

import zmq

from daybook.mailbox import Mailbox
from daybook.stopping import StopFlag
from master.access import Access
from master.assembly import Clocks, assemble
from master.changes import (
    Change,
    DigestsChanged,
    Fresh,
    LeaderSeen,
    LeadershipGained,
    LeadershipLost,
    MappingsChanged,
)
from master.collector import Collector
from master.control_server import ControlServer
from master.database import ResultsDatabase
from master.download_desk import Signer
from master.ledger import Fleet
from master.metrics import MasterMetrics
from master.publisher import Publisher
from master.recorder import Collected
from master.rollouts import PinWriter
from master.snapshot import SnapshotBox
from master.standing import Standing
from master.tuning import MasterTuning

log = logging.getLogger(__name__)


class Master:
    """Publishes the desired state, records results, and answers operators.

    Everything runs on the thread that calls `run`; watcher threads reach it only through
    the mailbox, so no socket and no database handle is ever shared. The parts it hands
    work to share the loop's scheduler, the sync book and the results database.
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
        signer: Signer | None = None,
        pins: PinWriter | None = None,
        standing: Standing | None = None,
        release_memory: Callable[[], None] | None = None,
    ) -> None:
        self.epoch = epoch
        # Without one, the master leads alone outside leader election (term 0).
        self.standing = standing = standing or Standing()
        self._metrics = metrics = metrics or MasterMetrics()
        metrics.leading(standing.leading, changed=False)
        self._collector = collector
        self._control = control
        self._mailbox = mailbox
        self._tuning = tuning
        self._monotonic = monotonic
        self._parts = parts = assemble(
            epoch=epoch,
            publisher=publisher,
            collector=collector,
            control=control,
            database=database,
            fleet=fleet,
            tuning=tuning,
            refreshers=refreshers or {},
            clocks=Clocks(wall=clock, monotonic=monotonic),
            metrics=metrics,
            snapshots=snapshots,
            # Who may ask for what; without a key ring, only the local socket may operate.
            access=access or Access(None),
            signer=signer,
            pins=pins,
            standing=standing,
            release_memory=release_memory,
        )
        self.snapshots = parts.view.snapshots
        # The results socket is read as messages come while the master is busy, and in
        # batches in quiet spells (see MasterTuning); a heartbeat read late must never make
        # a host look down, so a quiet spell's pause is a small share of down_after_s.
        self._next_results_read = -math.inf
        most_s = fleet.down_after_s / 10
        self._quiet_read_interval_s = min(tuning.quiet_collect_interval_s, most_s)
        self._report_read_interval_s = min(tuning.report_collect_interval_s, most_s)
        parts.view.publish()

    # -- start and stop -------------------------------------------------------------------------

    def restore(self) -> None:
        """Load the recent syncs and the last desired state, and serve that state at once."""
        self._parts.view.changed()
        self._parts.syncs.restore()
        self._parts.desired.restore()

    def run(self, stop: StopFlag) -> None:
        """Dispatch until `stop` is set, then drain."""
        everything = zmq.Poller()
        everything.register(self._collector.socket, zmq.POLLIN)
        everything.register(self._control.socket, zmq.POLLIN)
        everything.register(self._mailbox.fileno(), zmq.POLLIN)
        # The same without the results socket, for the quiet spells between its reads.
        between_reads = zmq.Poller()
        between_reads.register(self._control.socket, zmq.POLLIN)
        between_reads.register(self._mailbox.fileno(), zmq.POLLIN)
        while not stop.is_set():
            read_due = self._results_read_due()
            poller = everything if read_due is None else between_reads
            ready = dict(poller.poll(self._timeout_ms(read_due)))
            self._metrics.loop_wakeups.inc()
            if self._mailbox.fileno() in ready:
                for change in self._mailbox.drain():
                    self._dispatch_guarded(change)
            if self._collector.socket in ready:
                self._next_results_read = self._next_read_after(self._collect_guarded())
            if self._control.socket in ready:
                self._parts.desk.serve()
            self._parts.timers.run_due(self._monotonic())
        self._drain()

    def _drain(self) -> None:
        """Record what has already arrived and answer everyone waiting, then stop."""
        self._parts.desk.refuse_queued()
        self._collect()
        self._parts.housekeeper.flush_all()
        self._parts.desk.answer_all()

    # -- dispatching ----------------------------------------------------------------------------

    # A fault in one step (the results database locked past its busy timeout by a backup
    # or an sqlite3 shell, a bug) is logged, counted and left behind: the master serves on,
    # as it does when a periodic task fails (master.scheduler).

    def _dispatch_guarded(self, change: Change) -> None:
        try:
            self._dispatch(change)
        except Exception:
            log.exception("the master failed to act on %s; it carries on", type(change).__name__)
            self._metrics.task_failed("changes")

    def _collect_guarded(self) -> Collected:
        try:
            return self._collect()
        except Exception:
            # What the batch held beyond the failure is lost: minions' next heartbeats
            # restore liveness, and a sync that lost a report ends incomplete, saying who.
            log.exception("the master failed to record what minions sent; it carries on")
            self._metrics.task_failed("results")
            return Collected(0, 0)

    def _dispatch(self, change: Change) -> None:
        if isinstance(change, MappingsChanged | DigestsChanged):
            self._parts.desired.on_change(change)
        elif isinstance(change, Fresh):
            self._parts.desk.source_fresh(change.source)
        elif isinstance(change, LeadershipGained | LeadershipLost | LeaderSeen):
            self._leadership_changed(change)
        # A Wake only has the loop look at its stop flag.

    def _leadership_changed(self, change: LeadershipGained | LeadershipLost | LeaderSeen) -> None:
        standing, parts = self.standing, self._parts
        if isinstance(change, LeadershipGained):
            standing.gain(change.term)
            self._metrics.leading(True)
            # Collected as a standby: the reports already read belong in the book first.
            self._collect()
            parts.desired.lead()
        elif isinstance(change, LeadershipLost):
            if not standing.leading:
                return
            standing.lose()
            self._metrics.leading(False)
            parts.desk.lost_leadership(change.term.number, change.why)
        else:
            standing.see(change.leader)
        parts.view.changed()

    def _collect(self) -> Collected:
        recorded = self._parts.recorder.collect()
        if recorded.messages:
            self._parts.desk.release_waiters(self._monotonic())
        return recorded

    # -- when to wake ---------------------------------------------------------------------------

    def _results_read_due(self) -> float | None:
        """When the results socket may next be read, if that is later than now: only in a
        quiet spell, with no operator waiting and nothing published for a while."""
        mono = self._monotonic()
        if mono >= self._next_results_read or self._parts.desk.has_waiters:
            return None
        if mono - self._parts.broadcaster.last_sent < self._tuning.busy_window_s:
            return None
        return self._next_results_read

    def _next_read_after(self, read: Collected) -> float:
        """When a quiet spell's next read of the results socket may come, after `read`."""
        if read.messages >= self._tuning.batch_limit:
            # The read stopped at the limit: a backlog is read on at once (the quiet
            # pause is for messages trickling in).
            return -math.inf
        pause_s = self._report_read_interval_s if read.reports else self._quiet_read_interval_s
        return self._monotonic() + pause_s

    def _timeout_ms(self, read_due: float | None) -> int | None:
        dues = [due for due in (read_due, self._parts.timers.next_due()) if due is not None]
        if not dues:
            return None  # until a socket or the mailbox wakes it
        return max(0, math.ceil((min(dues) - self._monotonic()) * 1000))
