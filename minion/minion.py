"""One minion's socket side: takes events in, hands work to its sync worker, sends reports
and heartbeats out. Run by a `MinionLoop`, alone (a minion process) or with many others
sharing its process."""

from __future__ import annotations

import functools
import logging
import math
import random
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence

import zmq

from daybook.mailbox import Mailbox
from daybook.model.leadership import is_newer_term
from daybook.model.messages import Heartbeat, SyncEvent
from daybook.model.patterns import HostPattern
from daybook.model.results import Report
from daybook.wire import TOPIC_REPORT
from minion.memory import MinionMemory
from minion.reporter import Reporter
from minion.subscriber import EventSubscriber
from minion.sync import PendingSync, Syncer, SyncWorker, start_daemon_thread

log = logging.getLogger(__name__)

# Work for the loop's thread (the one owning the sockets), posted by a sync worker thread.
LoopTask = Callable[[], None]

EVENT_BATCH = 64
CLAIMED_MAX = 1024
# A delay drawn in [0, span) seconds: when a minion resends its reports after a master
# restart, so a large fleet does not answer the master's first event all at once.
Jitter = Callable[[float], float]


def uniform_jitter(span_s: float) -> float:
    return random.uniform(0.0, span_s)


class Minion:
    """Everything here runs on the loop's thread, which owns this minion's sockets."""

    def __init__(
        self,
        *,
        host: str,
        subscriber: EventSubscriber,
        reporter: Reporter,
        syncer: Syncer,
        memory: MinionMemory,
        mailbox: Mailbox[LoopTask],
        heartbeat_interval_s: float,
        boot_id: str,
        spawn: Callable[[LoopTask], None] = start_daemon_thread,
        persist: Callable[[LoopTask], None] = lambda save: save(),
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        more_reporters: Sequence[Reporter] = (),
        jitter: Jitter = uniform_jitter,
    ) -> None:
        self.host = host
        self.subscriber = subscriber
        # The first master's reporter, then one per further master: every report and
        # heartbeat goes to each, so standbys stay warm and a new leader has them all.
        self.reporter = reporter
        self.reporters = (reporter, *more_reporters)
        self._syncer = syncer
        self._memory = memory
        self._mailbox = mailbox
        # Runs the memory's file write: inline after each sync in a minion process, on a
        # background thread shared by the minions of one process.
        self._persist = persist
        # Its own interval, and the one in force: the master may ask a large fleet to
        # heartbeat less often, never more often than this minion's own.
        self._own_heartbeat_s = heartbeat_interval_s
        self._heartbeat_interval_s = heartbeat_interval_s
        self.boot_id = boot_id
        self._clock = clock
        self._monotonic = monotonic
        self._jitter = jitter
        self.started_at = clock()
        self.worker = SyncWorker(self._work, spawn)
        self._targets: dict[str, bool] = {}
        # Sync ids already handed to the worker for a report, so a republished event is
        # applied again (idempotently) but reported only once.
        self._claimed: OrderedDict[str, None] = OrderedDict.fromkeys(memory.reported())
        # The last event seen, for gap and restart detection; and the last one applied.
        self._epoch: int | None = None
        self._seq = 0
        self._applied: SyncEvent | None = None
        # Fencing: the highest leader's term seen (0: a master without election, the
        # lowest), and the lower terms whose events were ignored, each logged once.
        self.term = 0
        self._ignored_terms: set[int] = set()
        self.next_heartbeat = monotonic()
        # When the latest reports go to a master that restarted (inf: nothing to resend).
        self._resend_at = math.inf
        self.gaps = 0
        self.master_restarts = 0
        self.leader_changes = 0
        self.stale_events = 0

    @property
    def socket(self) -> zmq.Socket[bytes]:
        return self.subscriber.socket

    # -- events in ------------------------------------------------------------------------------

    def on_readable(self) -> None:
        for event in self.subscriber.receive_batch(EVENT_BATCH):
            self._accept(event)

    def _accept(self, event: SyncEvent) -> None:
        if not self._fenced_in(event.term):
            return
        if self._epoch != event.epoch:
            if self._epoch is not None:
                self.master_restarts += 1
                log.info("the master restarted (epoch %d -> %d)", self._epoch, event.epoch)
            # The master may have died holding reports it had not recorded: send the latest
            # again (it keeps the first copy of each). Also after our own restart. Not at
            # once: every minion hears the restarted master's first event at the same
            # moment, and a fleet's resends then arrive spread over a heartbeat interval.
            self._resend_at = self._monotonic() + self._jitter(self._heartbeat_interval_s)
        elif event.seq <= self._seq:
            return  # already seen
        elif event.seq != self._seq + 1:
            self.gaps += 1
            log.info(
                "missed %d event(s) from the master; the latest is authoritative",
                event.seq - self._seq - 1,
            )
        self._epoch, self._seq = event.epoch, event.seq
        if event.heartbeat_s is not None:
            self._pace(event.heartbeat_s)
        if not (self._targets_me(event.target) and event.addresses(self.host)):
            return
        report = event.sync_id not in self._claimed
        if report:
            self._claimed[event.sync_id] = None
            while len(self._claimed) > CLAIMED_MAX:
                self._claimed.popitem(last=False)
        self.worker.submit(event, report)

    def _fenced_in(self, term: int) -> bool:
        """False for an event of a lower term than the highest seen: its publisher was
        deposed (a paused process, a healed partition) and must not make this minion act.
        A higher term is a new leader: its epoch and seq start afresh, and it may lack
        reports the old leader had not recorded (the outbox goes again, as on a restart)."""
        if not is_newer_term(term, self.term):
            self.stale_events += 1
            if term not in self._ignored_terms:
                self._ignored_terms.add(term)
                log.warning("ignoring events of term %d: term %d leads", term, self.term)
            return False
        if term > self.term:
            if self._epoch is not None:
                self.leader_changes += 1
                log.info("a new leader: term %d (was %d)", term, self.term)
            self.term = term
            self._ignored_terms.clear()
            # Forget the deposed leader's epoch and seq: the next branch resends the outbox.
            self._epoch, self._seq = None, 0
        return True

    def _pace(self, asked_s: float) -> None:
        """Heartbeat every `asked_s` from now on, or every own interval if that is longer.
        A faster pace brings the next heartbeat forward: the master shows a host down
        sooner once it has given every minion time to hear it."""
        interval = max(self._own_heartbeat_s, asked_s)
        if interval < self._heartbeat_interval_s:
            self.next_heartbeat = min(self.next_heartbeat, self._monotonic() + interval)
        self._heartbeat_interval_s = interval

    @property
    def heartbeat_interval_s(self) -> float:
        return self._heartbeat_interval_s

    def _targets_me(self, target: str) -> bool:
        verdict = self._targets.get(target)
        if verdict is None:
            if len(self._targets) > 64:
                self._targets.clear()
            verdict = self._targets[target] = HostPattern(target).matches(self.host)
        return verdict

    def _resend_outbox(self, reporters: Sequence[Reporter] | None = None) -> None:
        """The latest reports again, to `reporters` (None: every master)."""
        for payload in self._memory.outbox():
            for reporter in self.reporters if reporters is None else reporters:
                reporter.send_frames([TOPIC_REPORT, payload])

    def _send(self, message: Report | Heartbeat) -> None:
        for reporter in self.reporters:
            reporter.send(message)

    # -- work (on the sync thread) and its results (back on this thread) ----------------------

    def _work(self, job: PendingSync) -> None:
        synced = self._syncer.run(job)
        self._mailbox.post(functools.partial(self._finished, job.event, synced.reports))
        # The reports are on their way; now remember them (and the applied digests), in
        # memory at once so the next sync plans with them. Changed services go to disk at
        # once: they spare a restarted minion its store listings. A no-op only adds its
        # report, which waits for the next heartbeat: a burst of syncs costs one write, and
        # a thousand minions sharing a process do not all write as the next sync comes in. Losing it
        # in a crash costs at most a report sent twice, which the master drops.
        self._syncer.remember(synced)
        if synced.applied:
            self._persist(self._memory.save)

    def _finished(self, event: SyncEvent, reports: list[Report]) -> None:
        # A report also tells the master this minion is alive and which state it applied.
        self._applied = event
        for report in reports:
            self._send(report)

    # -- heartbeats -----------------------------------------------------------------------------

    @property
    def next_due(self) -> float:
        """When `tick` next has something to do (monotonic clock)."""
        return min(self.next_heartbeat, self._resend_at)

    def tick(self, monotonic_now: float) -> None:
        if monotonic_now >= self._resend_at:
            self._resend_at = math.inf
            self._resend_outbox()
        if monotonic_now >= self.next_heartbeat:
            self.next_heartbeat = monotonic_now + self._heartbeat_interval_s
            back = [reporter for reporter in self.reporters if reporter.reconnected()]
            if back:
                # A report sent just before the old link died may have died with it, and a
                # sync this minion has answered is not answered again when republished.
                # The master keeps the first copy of each report, so extra copies are free.
                log.info("the link to the master is back; sending the latest reports again")
                self._resend_outbox(back)
            self._send(self.heartbeat())
            if self._memory.dirty:
                self._persist(self._memory.save)

    def heartbeat(self) -> Heartbeat:
        applied = self._applied
        return Heartbeat(
            host=self.host,
            boot_id=self.boot_id,
            started_at=self.started_at,
            sent_at=self._clock(),
            epoch=applied.epoch if applied else 0,
            seq=applied.seq if applied else 0,
            state_digest=applied.state_digest if applied else None,
            busy=self.worker.busy,
        )

    # -- stopping -------------------------------------------------------------------------------

    def stop(self, timeout_s: float) -> bool:
        """Stop taking work and wait up to `timeout_s` for the sync in progress."""
        self.worker.cancel()
        finished = self.worker.wait_idle(timeout_s)
        if not finished:
            log.warning("a sync is still running after %.0f s; stopping anyway", timeout_s)
        self._memory.save()
        return finished
