"""The subscriber: a minion's SUB socket, receiving the master's sync events."""

from __future__ import annotations

import logging

import zmq

from daybook.errors import WireError
from daybook.model.messages import MAX_FRAME_BYTES, SyncEvent
from daybook.wire import decode_as

log = logging.getLogger(__name__)


class EventSubscriber:
    """Receives typed `SyncEvent`s; a malformed frame is counted and dropped."""

    def __init__(self, socket: zmq.Socket[bytes]) -> None:
        self.socket = socket
        self.received = 0
        self.malformed = 0

    def receive_batch(self, limit: int) -> list[SyncEvent]:
        events: list[SyncEvent] = []
        # Ask whether a message waits instead of reading until zmq.Again: raising and
        # catching that costs several times the question, once per socket per event, and a
        # process of a thousand minions has a thousand sockets readable at once.
        while len(events) < limit and self._waiting():
            try:
                frames = self.socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            try:
                events.append(decode_as(SyncEvent, frames, max_bytes=MAX_FRAME_BYTES))
            except WireError as exc:
                self.malformed += 1
                log.info("dropped a malformed sync event: %s", exc)
        self.received += len(events)
        return events

    def _waiting(self) -> bool:
        events = self.socket.getsockopt(zmq.EVENTS)
        return isinstance(events, int) and bool(events & zmq.POLLIN)
