"""The operator desk: answers every request on the control socket.

Who may ask for what is `Access`'s to say, checked on every request. A sync waits for a
refresh round, so it goes out with what the registry and the store hold now; an operator
who waits on a sync gets the answer once it ends, or when the wait is over.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace

from daybook.errors import DaybookError, InputError
from daybook.model.messages import (
    OP_DOWNLOADS,
    OP_STATUS,
    OP_STORE_CHANGED,
    OP_SYNC,
    OP_SYNC_ABORT,
    OP_SYNC_RESULT,
    ControlReply,
    ControlRequest,
)
from daybook.model.rollout import Rollout
from daybook.model.sync import RUNNING, Sync
from daybook.net.transport import Peer
from master.access import ACCESS_OPS, Access
from master.control_server import ControlServer, Route
from master.desired_state import DesiredStateKeeper
from master.download_desk import DownloadDesk
from master.ledger import Fleet, SyncBook, Waiter
from master.metrics import MasterMetrics
from master.refresh import RefreshRound
from master.rollouts import RolloutDriver
from master.scheduler import Scheduler
from master.standing import Standing
from master.sync_keeper import SyncKeeper
from master.view_publisher import ViewPublisher

log = logging.getLogger(__name__)

# The source name of the store watcher (master.store_watcher.StoreWatcher.SOURCE).
STORE = "store"
# The timer that answers the operators whose wait is over.
WAITERS = "waiters"

Handler = Callable[[Route, ControlRequest], None]
# What only the leader does; a standby refuses these and names the leader.
LEADER_OPS = frozenset({OP_SYNC, OP_SYNC_RESULT, OP_SYNC_ABORT, OP_STORE_CHANGED})


class OperatorDesk:
    def __init__(
        self,
        *,
        control: ControlServer,
        access: Access,
        downloads: DownloadDesk,
        book: SyncBook,
        fleet: Fleet,
        syncs: SyncKeeper,
        rollouts: RolloutDriver,
        desired: DesiredStateKeeper,
        refresh: RefreshRound,
        view: ViewPublisher,
        metrics: MasterMetrics,
        scheduler: Scheduler,
        batch_limit: int,
        epoch: int,
        clock: Callable[[], float],
        monotonic: Callable[[], float],
        standing: Standing | None = None,
    ) -> None:
        self._control = control
        self._standing = standing or Standing()
        self._access = access
        self._downloads = downloads
        self._book = book
        self._fleet = fleet
        self._syncs = syncs
        self._rollouts = rollouts
        self._desired = desired
        self._refresh = refresh
        self._view = view
        self._metrics = metrics
        self._scheduler = scheduler
        self._batch_limit = batch_limit
        self._epoch = epoch
        self._clock = clock
        self._monotonic = monotonic
        # Syncs asked for while a refresh round is under way, in order.
        self._queue: list[tuple[Route, ControlRequest]] = []
        self._handlers: dict[str, Handler] = {
            OP_STATUS: self._status,
            OP_SYNC: self._sync,
            OP_SYNC_RESULT: self._sync_result,
            OP_SYNC_ABORT: self._abort,
            OP_STORE_CHANGED: self._store_changed,
        }

    def serve(self) -> None:
        """Answer (or queue, or hold) every request waiting on the control socket."""
        requests = self._control.receive_batch(self._batch_limit)
        metrics = self._metrics
        metrics.add_total(
            metrics.invalid_frames.labels("control"),
            "invalid_frames.control",
            self._control.malformed,
        )
        if requests:  # a key accepted or deleted changes who is up
            self._view.changed()
        for route, request, peer in requests:
            metrics.operator_requests.inc()
            try:
                self._handle(route, request, peer)
            except Exception as exc:  # one bad request must not stop the master
                self._failed(route, request, exc, f"operator request {request.op}")

    def _handle(self, route: Route, request: ControlRequest, peer: Peer) -> None:
        # Checked on every request: a CURVE session is authenticated once, when it starts,
        # and the key's standing may have changed since.
        refusal = self._access.refusal(request, peer)
        if refusal is not None:
            self._metrics.refused_operator_requests.labels(request.op).inc()
            self._reply(route, ControlReply(request.request_id, error=refusal))
            return
        if request.op == OP_DOWNLOADS:
            host = self._access.minion_host(request, peer)
            assert host is not None  # `refusal` lets no other peer through
            self._reply(route, self._downloads.answer(request, host))
            return
        if request.op in ACCESS_OPS:
            answer = self._access.answer(request, peer)
            self._reply(route, answer.reply)
            if answer.cut_off:
                self._desired.cut_off(answer.host)
            return
        handler = self._handlers.get(request.op)
        if request.op in LEADER_OPS and not self._standing.leading:
            error = self._standing.standby_error()
            self._reply(route, ControlReply(request.request_id, error=error, standby=True))
            return
        if handler is None:
            error = f"operation {request.op} is refused"
            self._reply(route, ControlReply(request.request_id, error=error))
            return
        handler(route, request)

    def _status(self, route: Route, request: ControlRequest) -> None:
        status = self._fleet.status(self._epoch, self._clock())
        status = replace(
            status,
            syncs=tuple(self._book),
            rollouts=self._rollouts.recent(),
            masters=self._standing.masters(),
        )
        self._reply(route, ControlReply(request.request_id, status=status))

    def _sync(self, route: Route, request: ControlRequest) -> None:
        rollout = self._rollouts.find_request(request.request_id)
        if rollout is not None:  # a retry of a rolling sync already started
            self._answer_rollout_or_wait(route, request, rollout)
            return
        sync = self._syncs.find_request(request.request_id)
        if sync is not None:  # a retry of a request that already started its sync
            self._answer_or_wait(route, request, sync)
            return
        queued = [item for item in self._queue if item[1].request_id != request.request_id]
        self._queue = [*queued, (route, request)]  # a retry takes the newest route
        self._refresh.start()
        if not self._refresh.under_way:
            self._start_queued()

    def _sync_result(self, route: Route, request: ControlRequest) -> None:
        assert request.sync_id is not None
        rollout = self._rollouts.find(request.sync_id)
        if rollout is not None:
            self._answer_rollout_or_wait(route, request, rollout)
            return
        sync = self._syncs.find(request.sync_id)
        if sync is None:
            error = f"unknown sync id {request.sync_id}"
            self._reply(route, ControlReply(request.request_id, error=error))
            return
        self._book.add(sync)
        self._answer_or_wait(route, request, sync)

    def _abort(self, route: Route, request: ControlRequest) -> None:
        assert request.sync_id is not None
        try:
            rollout = self._rollouts.abort(request.sync_id)
        except InputError as exc:
            reply = ControlReply(request.request_id, error=str(exc), invalid=True)
            self._reply(route, reply)
            return
        self._reply(route, self._rollout_reply(request.request_id, rollout))
        self.release_waiters(self._monotonic())

    def _store_changed(self, route: Route, request: ControlRequest) -> None:
        # The listing that follows starts the automatic sync, if the store did change.
        self._refresh.read_again(STORE)
        self._reply(route, ControlReply(request.request_id))

    def _reply(self, route: Route, reply: ControlReply) -> None:
        """Every reply names the leader, when this master knows it, and says whether this
        master leads."""
        leader = self._standing.leader
        if reply.leader is None and leader is not None:
            reply = replace(reply, leader=leader)
        self._control.reply(route, replace(reply, leading=self._standing.leading))

    def lost_leadership(self, number: int, why: str) -> None:
        """This master's term ended: nobody waits on it for a sync it will not finish."""
        error = (
            f"this master lost the leadership (term {number}: {why}); the sync may go on "
            "under the new leader: ask the leader"
        )
        queue, self._queue = self._queue, []
        waiters = [(route, request.request_id) for route, request in queue]
        waiters += [(w.route, w.request_id) for w in self._book.release_all()]
        mono = self._monotonic()
        waiters += [(w.route, w.request_id) for w in self._rollouts.release(mono, everyone=True)]
        for route, request_id in waiters:
            self._reply(route, ControlReply(request_id, error=error, standby=True))
        self._refresh.end()
        self._scheduler.cancel(WAITERS)

    # -- syncs after a refresh round ------------------------------------------------------------

    def source_fresh(self, source: str) -> None:
        if self._refresh.fresh(source) and (self._queue or self._rollouts.awaiting_refresh):
            self._start_queued()

    def refresh_overdue(self, _now: float) -> None:
        self._refresh.give_up()
        self._start_queued()

    def _start_queued(self) -> None:
        self._refresh.end()
        self._desired.rebuild_pending()  # what the refresh found goes out first
        # The rollouts that waited on this round, before a rollout started below widens
        # its pin and starts the next round: its first batch waits for that one.
        self._rollouts.refreshed()
        queue, self._queue = self._queue, []
        for route, request in queue:
            try:
                self._start_one(route, request)
            except Exception as exc:  # a locked database: this operator hears why, the rest go on
                self._failed(route, request, exc, f"starting the sync of {request.request_id}")

    def _failed(self, route: Route, request: ControlRequest, exc: Exception, what: str) -> None:
        """A fault while serving `request` (a bug, a locked database): logged with its
        traceback, and told to the operator who asked, who would otherwise wait it out."""
        log.exception("%s failed", what)
        self._reply(route, ControlReply(request.request_id, error=f"internal error: {exc}"))

    def _start_one(self, route: Route, request: ControlRequest) -> None:
        if request.batch is not None:
            self._start_rollout(route, request)
            return
        sync = self._desired.sync_now(request.target, request.request_id, request.deadline_s)
        if sync is None:
            error = "the master has not read the mappings and the store yet; try again in a moment"
            self._reply(route, ControlReply(request.request_id, error=error))
            return
        self._answer_or_wait(route, request, sync)

    def _start_rollout(self, route: Route, request: ControlRequest) -> None:
        if not self._desired.has_state:
            error = "the master has not read the mappings and the store yet; try again in a moment"
            self._reply(route, ControlReply(request.request_id, error=error))
            return
        try:
            rollout = self._rollouts.start(request)
        except DaybookError as exc:  # bad input, or the registry refused the pin
            invalid = isinstance(exc, InputError)
            reply = ControlReply(request.request_id, error=str(exc), invalid=invalid)
            self._reply(route, reply)
            return
        self._answer_rollout_or_wait(route, request, rollout)

    def refuse_queued(self) -> None:
        """The master is stopping: the syncs not started yet will not be."""
        queue, self._queue = self._queue, []
        for route, request in queue:
            error = "the master is stopping"
            self._reply(route, ControlReply(request.request_id, error=error))

    # -- operators waiting on a sync ------------------------------------------------------------

    def _answer_or_wait(self, route: Route, request: ControlRequest, sync: Sync) -> None:
        current = self._book.get(sync.sync_id) or sync
        if request.wait_s > 0 and current.state == RUNNING:
            deadline = self._monotonic() + request.wait_s
            self._book.wait(Waiter(sync.sync_id, request.request_id, route, deadline))
            self._scheduler.no_later_than(WAITERS, deadline)
            return
        self._reply(route, ControlReply(request.request_id, sync=current))

    def _answer_rollout_or_wait(
        self, route: Route, request: ControlRequest, rollout: Rollout
    ) -> None:
        if request.wait_s > 0 and not rollout.ended:
            deadline = self._monotonic() + request.wait_s
            self._rollouts.wait(Waiter(rollout.rollout_id, request.request_id, route, deadline))
            self._scheduler.no_later_than(WAITERS, deadline)
            return
        self._reply(route, self._rollout_reply(request.request_id, rollout))

    def _rollout_reply(self, request_id: str, rollout: Rollout) -> ControlReply:
        return ControlReply(request_id, sync=self._rollouts.summary(rollout), rollout=rollout)

    @property
    def has_waiters(self) -> bool:
        """Whether an operator waits on a sync or a rolling sync."""
        return bool(self._book.waiters or self._rollouts.waiters)

    def release_waiters(self, mono: float) -> None:
        """Count the rollouts' batches that closed, then answer the operators whose sync or
        rollout has ended or whose wait is over."""
        self._rollouts.advance()
        for waiter in self._book.release(mono):
            self._answer(waiter)
        for waiter in self._rollouts.release(mono):
            self._answer_rollout(waiter)
        deadlines = [self._book.next_deadline(), self._rollouts.next_deadline()]
        self._scheduler.at(WAITERS, min((d for d in deadlines if d is not None), default=None))

    def answer_all(self) -> None:
        """The master is stopping: every waiting operator gets the sync as it stands."""
        for waiter in self._book.release_all():
            self._answer(waiter)
        for waiter in self._rollouts.release(self._monotonic(), everyone=True):
            self._answer_rollout(waiter)
        self._scheduler.cancel(WAITERS)

    def _answer_rollout(self, waiter: Waiter) -> None:
        rollout = self._rollouts.find(waiter.sync_id)
        if rollout is None:
            reply = ControlReply(waiter.request_id, error=f"unknown sync id {waiter.sync_id}")
        else:
            reply = self._rollout_reply(waiter.request_id, rollout)
        self._reply(waiter.route, reply)

    def _answer(self, waiter: Waiter) -> None:
        sync = self._syncs.find(waiter.sync_id)
        if sync is None:
            reply = ControlReply(waiter.request_id, error=f"unknown sync id {waiter.sync_id}")
        else:
            reply = ControlReply(waiter.request_id, sync=sync)
        self._reply(waiter.route, reply)
