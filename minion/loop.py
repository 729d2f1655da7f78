"""The minion loop: one poller loop running any number of minions on the thread that owns
their sockets. A minion process runs one minion in it; a load test runs a thousand in one."""

from __future__ import annotations

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

    def run(self, stop: StopFlag) -> None:
        poller = zmq.Poller()
        by_socket: dict[zmq.Socket[bytes], Minion] = {}
        for minion in self._minions:
            poller.register(minion.socket, zmq.POLLIN)
            by_socket[minion.socket] = minion
        poller.register(self._mailbox.fileno(), zmq.POLLIN)
        # Between two turns of a backlog only the mailbox needs a look: polling a thousand
        # sockets costs about a millisecond, and their readiness is already known.
        mailbox_only = zmq.Poller()
        mailbox_only.register(self._mailbox.fileno(), zmq.POLLIN)
        backlog: list[Minion] = []
        next_tick = -math.inf
        while not stop.is_set():
            now = self._monotonic()
            if now >= next_tick:
                next_tick = self._tick(now)
            if backlog:
                ready = {item for item, _ in mailbox_only.poll(0)}
            else:
                ready = {item for item, _ in poller.poll(self._timeout_ms(next_tick))}
                backlog = [by_socket[item] for item in ready if isinstance(item, zmq.Socket)]
            if self._mailbox.fileno() in ready:
                self.run_tasks()
            turn, backlog = backlog[:SOCKETS_PER_TURN], backlog[SOCKETS_PER_TURN:]
            for minion in turn:
                minion.on_readable()

    def run_tasks(self) -> None:
        for callback in self._mailbox.drain():
            callback()

    def _tick(self, now: float) -> float:
        """Tick every minion; the time the next one is due (heartbeats and resends only
        move on ticks)."""
        for minion in self._minions:
            minion.tick(now)
        return min((m.next_due for m in self._minions), default=math.inf)

    def _timeout_ms(self, next_tick: float) -> int:
        if math.isinf(next_tick):
            return 1000
        return max(0, math.ceil((next_tick - self._monotonic()) * 1000))
