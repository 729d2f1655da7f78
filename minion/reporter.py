"""The reporter: a minion's PUSH socket, sending reports and heartbeats to the master."""

from __future__ import annotations

import logging

import zmq

from daybook.wire import Heartbeat, Report

log = logging.getLogger(__name__)


class Reporter:
    """Sends typed messages without ever blocking the minion.

    PUSH queues messages while the master is away (up to the socket's high-water mark) and
    delivers them when it comes back; past the mark a message is dropped and counted, and
    the minion's outbox still holds its latest reports for the resend after a restart.
    """

    def __init__(self, socket: zmq.Socket[bytes]) -> None:
        self.socket = socket
        self.sent = 0
        self.dropped = 0

    def send(self, message: Report | Heartbeat) -> bool:
        return self.send_frames(message.encode())

    def send_frames(self, frames: list[bytes]) -> bool:
        try:
            self.socket.send_multipart(frames, zmq.NOBLOCK)
        except zmq.Again:
            self.dropped += 1
            log.debug("the queue to the master is full; dropped a %r", frames[0])
            return False
        self.sent += 1
        return True
