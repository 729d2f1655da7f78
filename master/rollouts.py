"""The rollout driver: runs rolling syncs batch by batch, on the master's loop.

The master drives each rollout, so it goes on when the operator's terminal closes: a batch
is a sync addressed to that batch's hosts only; when it closes (every host answered, or its
deadline passed, or every silent host is down) its failures are counted with the earlier
ones (`daybook.model.rollout` decides), and the next batch starts after `batch_wait_s`, or
none ever does.

A rollout that carries a pin owns it: the pin is written first reaching no host, widened to
each batch just before that batch starts (after a refresh round, so the batch's event
carries it), set for every host when the rollout completes, and put back as it was on an
abort. While a rollout is halted the pin stays as it is, so the auto-syncs that follow
store and registry changes give the hosts it never reached the version they had.

Rollouts live in memory only: a master restarted mid-rollout forgets it (see the README).
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import replace
from typing import Protocol

from daybook.errors import DaybookError, InputError
from daybook.model.messages import ControlRequest
from daybook.model.pins import Pin
from daybook.model.rollout import (
    COMPLETE,
    HALTED,
    RUNNING,
    Rollout,
    parse_batch_size,
    rollout_summary,
    start_rollout,
)
from daybook.model.sync import Sync
from master.desired_state import DesiredStateKeeper
from master.ledger import Fleet, Waiter, Waiters
from master.refresh import RefreshRound
from master.scheduler import Scheduler
from master.served import Served
from master.sync_keeper import ALL_HOSTS, SyncKeeper
from master.view_publisher import ViewPublisher

log = logging.getLogger(__name__)

# The timer that starts a batch once the wait after the previous one is over.
ROLLOUTS = "rollouts"
# How many rollouts the master keeps at hand, running or ended.
KEPT_ROLLOUTS = 32


class PinWriter(Protocol):
    """Where pins are stored (the registry): one read-modify-write of a service's pin.
    `change` gets the pin as stored (None: none) and returns the new one (None: delete)."""

    def update_pin(self, service: str, change: Callable[[Pin | None], Pin | None]) -> Pin | None:
        """Apply `change` atomically (check-and-set); return the pin stored after it."""
        ...


class RolloutDriver:
    """Every rolling sync of this master: starts them, moves each on as its batches close,
    aborts them, and holds the operators waiting on them."""

    def __init__(
        self,
        *,
        served: Served,
        syncs: SyncKeeper,
        desired: DesiredStateKeeper,
        fleet: Fleet,
        refresh: RefreshRound,
        view: ViewPublisher,
        scheduler: Scheduler,
        pins: PinWriter | None,
        clock: Callable[[], float],
        monotonic: Callable[[], float],
    ) -> None:
        self._served = served
        self._syncs = syncs
        self._desired = desired
        self._fleet = fleet
        self._refresh = refresh
        self._view = view
        self._scheduler = scheduler
        self._pins = pins
        self._clock = clock
        self._monotonic = monotonic
        self._rollouts: OrderedDict[str, Rollout] = OrderedDict()
        self._waiters = Waiters()
        # Pin rollouts whose pin was widened for the next batch, waiting for a refresh round
        # to bring it into the desired state; and those whose round has ended.
        self._awaiting_refresh: set[str] = set()
        self._refreshed: set[str] = set()

    # -- what the operator desk asks --------------------------------------------------------------

    def start(self, request: ControlRequest) -> Rollout:
        """Start the rolling sync `request` asks for, over the live hosts its target selects
        now; its first batch goes out at once (or after a refresh round, with a pin)."""
        assert request.batch is not None
        if request.pin is not None and self._pins is None:
            raise InputError("this master cannot store pins")
        now = self._clock()
        target = request.target or ALL_HOSTS
        rollout = start_rollout(
            rollout_id=os.urandom(16).hex(),
            target=target,
            hosts=self._fleet.expected_for(target, now),
            size=parse_batch_size(request.batch),
            max_failures=request.max_failures,
            batch_wait_s=request.batch_wait_s,
            batch_timeout_s=request.deadline_s,
            now=now,
            request_id=request.request_id,
            pin=request.pin,
        )
        if rollout.pin is not None:
            rollout = replace(rollout, pin=self._claim_pin(rollout.pin))
        self._keep(rollout)
        log.info(
            "rolling sync %s to %s: %d host(s) in %d batch(es), at most %d failure(s)",
            rollout.rollout_id,
            target,
            len(rollout.hosts),
            len(rollout.batches),
            rollout.max_failures,
        )
        self._ended(rollout)  # a rollout of no host is complete as it starts
        self.advance()
        return self._rollouts[rollout.rollout_id]

    def find(self, rollout_id: str) -> Rollout | None:
        return self._rollouts.get(rollout_id)

    def find_request(self, request_id: str) -> Rollout | None:
        """The rollout an operator request started, so that its retry starts no other."""
        return next((r for r in self._rollouts.values() if r.request_id == request_id), None)

    def summary(self, rollout: Rollout) -> Sync:
        """The rollout as one sync under its id, with each batch's answers so far."""
        batches = [sync for sync_id in rollout.batch_syncs if (sync := self._syncs.find(sync_id))]
        return rollout_summary(rollout, batches)

    def recent(self) -> tuple[Rollout, ...]:
        """The rollouts kept, oldest first."""
        return tuple(self._rollouts.values())

    def abort(self, rollout_id: str) -> Rollout:
        """Stop a running or halted rollout: no batch starts any more, and its pin is put
        back. A halted rollout owns its pin until it is aborted."""
        rollout = self._rollouts.get(rollout_id)
        if rollout is None:
            raise InputError(f"no rolling sync {rollout_id} is known to this master")
        if rollout.state not in (RUNNING, HALTED):
            raise InputError(f"the rolling sync {rollout_id} is {rollout.state} already")
        rollout = rollout.aborted(self._clock())
        if rollout.pin is not None:
            problem = self._write_pin(rollout.pin, _restorer(rollout.pin))
            if problem is not None:
                rollout = replace(rollout, why=f"{rollout.why}; {problem}")
        self._keep(rollout)
        self._awaiting_refresh.discard(rollout_id)
        self._refreshed.discard(rollout_id)
        log.warning("rolling sync %s aborted by an operator", rollout_id)
        return rollout

    # -- driving ------------------------------------------------------------------------------

    def advance(self, _mono: float | None = None) -> None:
        """Count the batches that have closed, and start the batches now due."""
        now = self._clock()
        for rollout in [r for r in self._rollouts.values() if not r.ended]:
            current = self._count_closed_batch(rollout, now)
            if not current.ended:
                current = self._start_due_batch(current, now)
            if current is not rollout:
                self._keep(current)
        # A rollout waiting for a refresh round is started by its end, not by this timer.
        due = [
            due
            for r in self._rollouts.values()
            if r.rollout_id not in self._awaiting_refresh
            and (due := r.next_batch_due()) is not None
        ]
        self._scheduler.at(ROLLOUTS, None if not due else self._mono_at(min(due), now))

    def refreshed(self) -> None:
        """A refresh round ended: the pins widened before it are in the desired state."""
        if self._awaiting_refresh:
            self._refreshed |= self._awaiting_refresh
            self._awaiting_refresh.clear()
            self.advance()

    @property
    def awaiting_refresh(self) -> bool:
        return bool(self._awaiting_refresh)

    def _count_closed_batch(self, rollout: Rollout, now: float) -> Rollout:
        index = rollout.running_batch
        if index is None:
            return rollout
        batch = self._syncs.find(rollout.batch_syncs[index])
        if batch is not None and batch.closed_at is None:
            return rollout
        # A batch sync the master no longer holds at all counts as unanswered.
        rollout = rollout.with_batch_result({} if batch is None else batch.results, now)
        log.info(
            "rolling sync %s: batch %d of %d closed, %d failure(s) so far: %s",
            rollout.rollout_id,
            index + 1,
            len(rollout.batches),
            len(rollout.failed),
            rollout.state,
        )
        self._ended(rollout)
        return rollout

    def _start_due_batch(self, rollout: Rollout, now: float) -> Rollout:
        batch = rollout.next_batch(now)
        if batch is None:
            return rollout
        rollout_id = rollout.rollout_id
        if rollout.pin is not None and rollout_id not in self._refreshed:
            if rollout_id not in self._awaiting_refresh:
                problem = self._write_pin(
                    rollout.pin, _widener(rollout.pin, (*rollout.reached, *batch))
                )
                if problem is not None:  # a batch must not go out without its pin
                    stopped = rollout.stopped(problem, now)
                    self._ended(stopped)
                    return stopped
                self._awaiting_refresh.add(rollout_id)
                self._refresh.start()
                if not self._refresh.under_way:  # nothing to refresh: the state is current
                    self._awaiting_refresh.discard(rollout_id)
                    self._refreshed.add(rollout_id)
            if rollout_id not in self._refreshed:
                return rollout
        sync = self._desired.sync_now(rollout.target, None, rollout.batch_timeout_s, hosts=batch)
        if sync is None:  # no desired state yet: the next pass tries again
            return rollout
        self._refreshed.discard(rollout_id)
        log.info(
            "rolling sync %s: batch %d of %d is sync %s to %s",
            rollout_id,
            len(rollout.batch_syncs) + 1,
            len(rollout.batches),
            sync.sync_id,
            ", ".join(batch),
        )
        return rollout.with_batch_started(sync.sync_id)

    def _ended(self, rollout: Rollout) -> None:
        if rollout.state == COMPLETE and rollout.pin is not None:
            self._write_pin(rollout.pin, _widener(rollout.pin, None))
        if rollout.ended:
            self._view.changed()

    def _mono_at(self, wall: float, now: float) -> float:
        """The scheduler's (monotonic) time for the wall-clock time `wall`."""
        return self._monotonic() + max(0.0, wall - now)

    def _keep(self, rollout: Rollout) -> None:
        self._rollouts[rollout.rollout_id] = rollout
        self._rollouts.move_to_end(rollout.rollout_id)
        while len(self._rollouts) > KEPT_ROLLOUTS:
            oldest = next(iter(self._rollouts))
            if not self._rollouts[oldest].ended:
                break
            del self._rollouts[oldest]
        self._served.rollouts = tuple(self._rollouts.values())
        self._view.changed()

    # -- pins ---------------------------------------------------------------------------------

    def _claim_pin(self, pin: Pin) -> Pin:
        """Write `pin` reaching no host yet, remembering the version it replaces."""
        assert self._pins is not None

        def claim(current: Pin | None) -> Pin:
            return replace(pin, previous=None if current is None else current.version, hosts=())

        stored = self._pins.update_pin(pin.service, claim)
        assert stored is not None
        return stored

    def _write_pin(self, pin: Pin, change: Callable[[Pin | None], Pin | None]) -> str | None:
        """Store what `change` makes of the stored pin; what went wrong, if anything (the
        registry may be down: that must not stop the master's loop)."""
        assert self._pins is not None
        try:
            self._pins.update_pin(pin.service, change)
        except DaybookError as exc:
            log.error("could not store the pin of %s: %s", pin.service, exc)
            return f"the pin of {pin.service} could not be stored: {exc}"
        return None

    # -- operators waiting ----------------------------------------------------------------------

    def wait(self, waiter: Waiter) -> None:
        self._waiters.add(waiter)

    @property
    def waiters(self) -> tuple[Waiter, ...]:
        return self._waiters.all

    def next_deadline(self) -> float | None:
        return self._waiters.next_deadline()

    def release(self, monotonic_now: float, *, everyone: bool = False) -> list[Waiter]:
        """Remove and return the waiters whose rollout ended or whose wait is over."""
        if everyone:
            return self._waiters.release_all()
        return self._waiters.release(monotonic_now, self._is_over)

    def _is_over(self, rollout_id: str) -> bool:
        rollout = self._rollouts.get(rollout_id)
        return rollout is None or rollout.ended


def _widener(pin: Pin, hosts: tuple[str, ...] | None) -> Callable[[Pin | None], Pin | None]:
    """Let the pin reach `hosts` (None: every host), unless it is no longer the rollout's."""

    def widen(current: Pin | None) -> Pin | None:
        if not _owned(current, pin):
            return current
        return replace(pin, hosts=None if hosts is None else tuple(sorted(hosts)))

    return widen


def _restorer(pin: Pin) -> Callable[[Pin | None], Pin | None]:
    """Put back the pin this one replaced (or none), unless it is no longer the rollout's."""

    def restore(current: Pin | None) -> Pin | None:
        if not _owned(current, pin):
            return current
        return None if pin.previous is None else Pin(pin.service, pin.previous)

    return restore


def _owned(current: Pin | None, pin: Pin) -> bool:
    """Whether the stored pin is still the one a rollout wrote (an operator may have pinned
    or unpinned the service since: theirs stands)."""
    return (
        current is not None
        and current.version == pin.version
        and (current.previous == pin.previous)
    )
