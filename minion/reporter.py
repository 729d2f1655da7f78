"""The reporter: a minion's PUSH socket, sending reports and heartbeats to the master."""

from __future__ import annotations

import logging

import zmq

from daybook import wire
from daybook.model.messages import Heartbeat
from daybook.model.results import Report

log = logging.getLogger(__name__)


class Reporter:
    """Sends typed messages without ever blocking the minion.

    PUSH queues messages while the master is away (up to the socket's high-water mark) and
    delivers them when it comes back; past the mark a message is dropped and counted, and
    the minion's outbox still holds its latest reports for the resend after a restart.

    `link_events`, a monitor of the PUSH socket's completed handshakes, tells when the link
    to the master was made again: what had gone into the old connection, but not yet across
    it, went down with it.
    """

    def __init__(
        self, socket: zmq.Socket[bytes], link_events: zmq.Socket[bytes] | None = None
    ) -> None:
        self.socket = socket
        self.sent = 0
        self.dropped = 0
        self._link_events = link_events
        self._handshakes = 0
        self.reconnects = 0

    def send(self, message: Report | Heartbeat) -> bool:
        return self.send_frames(wire.encode(message))

    def send_frames(self, frames: list[bytes]) -> bool:
        try:
            self.socket.send_multipart(frames, zmq.NOBLOCK)
        except zmq.Again:
            self.dropped += 1
            log.debug("the queue to the master is full; dropped a %r", frames[0])
            return False
        self.sent += 1
        return True

    def reconnected(self) -> bool:
        """True once after the link to the master is made again (any handshake after the
        first); never blocks."""
        if self._link_events is None:
            return False
        before = self._handshakes
        while True:
            try:
                self._link_events.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            self._handshakes += 1
        if self._handshakes in (before, 1):
            return False
        self.reconnects += 1
        return True

    def close(self) -> None:
        if self._link_events is not None:
            self.socket.disable_monitor()
            self._link_events.close()
        self.socket.close()
