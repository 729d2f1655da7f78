"""The driver: one poller loop running any number of minions on the thread that owns their
sockets. A minion process drives one; the swarm drives a thousand."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence

import zmq

from daybook.mailbox import Mailbox
from daybook.stopping import StopFlag
from minion.minion import Callback, Minion

# Readable minions handled between two looks at the mailbox, so that with a thousand
# minions the first reports leave while later events are still being read.
SOCKETS_PER_TURN = 32


class Driver:
    def __init__(
        self,
        minions: Sequence[Minion],
        mailbox: Mailbox[Callback],
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
        backlog: list[Minion] = []
        while not stop.is_set():
            self._tick()
            timeout_ms = 0 if backlog else self._timeout_ms()
            ready = {item for item, _ in poller.poll(timeout_ms)}
            if self._mailbox.fileno() in ready:
                self.run_callbacks()
            if not backlog:
                backlog = [by_socket[item] for item in ready if isinstance(item, zmq.Socket)]
            turn, backlog = backlog[:SOCKETS_PER_TURN], backlog[SOCKETS_PER_TURN:]
            for minion in turn:
                minion.on_readable()

    def run_callbacks(self) -> None:
        for callback in self._mailbox.drain():
            callback()

    def _tick(self) -> None:
        now = self._monotonic()
        for minion in self._minions:
            minion.tick(now)

    def _timeout_ms(self) -> int:
        nearest = min((m.next_heartbeat for m in self._minions), default=math.inf)
        if math.isinf(nearest):
            return 1000
        return max(0, math.ceil((nearest - self._monotonic()) * 1000))
