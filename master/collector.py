"""The collector: the master's PULL socket, receiving reports and heartbeats from minions."""

from __future__ import annotations

import logging

import zmq

from daybook.errors import WireError
from daybook.wire import MAX_MESSAGE_BYTES, Heartbeat, Report, decode_frames

log = logging.getLogger(__name__)


class Collector:
    """Receives typed messages; a malformed frame is counted and dropped, never raised."""

    def __init__(self, socket: zmq.Socket[bytes]) -> None:
        self.socket = socket
        self.received = 0
        self.malformed = 0

    def receive_batch(self, limit: int) -> list[tuple[Report | Heartbeat, bytes]]:
        """Everything waiting, up to `limit` messages, without blocking; each with its
        payload as received."""
        messages: list[tuple[Report | Heartbeat, bytes]] = []
        while len(messages) < limit:
            try:
                frames = self.socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            try:
                message = decode_frames(frames, max_bytes=MAX_MESSAGE_BYTES)
                if not isinstance(message, Report | Heartbeat):
                    raise WireError(f"unexpected {type(message).__name__} from a minion")
                messages.append((message, frames[1]))
            except WireError as exc:
                self.malformed += 1
                log.debug("dropped a malformed message from a minion: %s", exc)
        self.received += len(messages)
        return messages
