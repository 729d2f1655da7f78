"""The minion loop: one poller loop running any number of minions on the thread that owns
their sockets. A minion process runs one minion in it; a load test runs a thousand in one."""

from __future__ import annotations

import heapq
import math
import time
from collections.abc import Callable, Sequence

import zmq

from daybook.mailbox import Mailbox
from daybook.stopping import StopFlag
from minion.minion import LoopTask, Minion

# Readable minions handled between two looks at the mailbox, so that with a thousand
# minions the first reports leave while later events are still being read.
SOCKETS_PER_TURN = 32


class MinionLoop:
    """Reads each minion's SUB socket when it is readable, ticks their heartbeats, and runs
    the tasks the sync workers post back (their reports go out on this thread)."""

    def __init__(
        self,
        minions: Sequence[Minion],
        mailbox: Mailbox[LoopTask],
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._minions = list(minions)
        self._mailbox = mailbox
        self._monotonic = monotonic
        # Who is due when: a heap of (due, index), and each minion's earliest entry in it.
        # A swarm's heartbeats are spread over the interval, so ticking every minion each
        # time one is due cost a thousand minions most of a core; now a tick costs only the
        # minions due. A minion whose due time moves earlier (an event, a faster pace) gets
        # an earlier entry; its later one is skipped when it comes up.
        self._due: list[tuple[float, int]] = []
        self._queued = [math.inf] * len(self._minions)
        for index in range(len(self._minions)):
            self.reschedule(index)

    def run(self, stop: StopFlag) -> None:
        poller = zmq.Poller()
        by_socket: dict[zmq.Socket[bytes], int] = {}
        for index, minion in enumerate(self._minions):
            poller.register(minion.socket, zmq.POLLIN)
            by_socket[minion.socket] = index
        poller.register(self._mailbox.fileno(), zmq.POLLIN)
        # Between two turns of a backlog only the mailbox needs a look: polling a thousand
        # sockets costs about a millisecond, and their readiness is already known.
        mailbox_only = zmq.Poller()
        mailbox_only.register(self._mailbox.fileno(), zmq.POLLIN)
        backlog: list[int] = []
        while not stop.is_set():
            next_tick = self.tick(self._monotonic())
            if backlog:
                ready = {item for item, _ in mailbox_only.poll(0)}
            else:
                ready = {item for item, _ in poller.poll(self._timeout_ms(next_tick))}
                backlog = [by_socket[item] for item in ready if isinstance(item, zmq.Socket)]
            if self._mailbox.fileno() in ready:
                self.run_tasks()
            turn, backlog = backlog[:SOCKETS_PER_TURN], backlog[SOCKETS_PER_TURN:]
            for index in turn:
                self._minions[index].on_readable()
                self.reschedule(index)

    def run_tasks(self) -> None:
        for callback in self._mailbox.drain():
            callback()

    def tick(self, now: float) -> float:
        """Tick the minions due by `now`; when the next one is due (heartbeats and resends
        only move on ticks)."""
        due, queued = self._due, self._queued
        while due and due[0][0] <= now:
            at, index = heapq.heappop(due)
            if at != queued[index]:
                continue  # superseded by an earlier entry, ticked already
            queued[index] = math.inf
            self._minions[index].tick(now)
            self.reschedule(index)
        return due[0][0] if due else math.inf

    def reschedule(self, index: int) -> None:
        """Queue minion `index` at its due time, if that is sooner than its entry (after
        anything but a tick may have moved it)."""
        at = self._minions[index].next_due
        if at < self._queued[index]:
            self._queued[index] = at
            heapq.heappush(self._due, (at, index))

    def _timeout_ms(self, next_tick: float) -> int:
        if math.isinf(next_tick):
            return 1000
        return max(0, math.ceil((next_tick - self._monotonic()) * 1000))
