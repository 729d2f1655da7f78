"""The publisher: the master's PUB socket, sending sync events to every subscribed minion."""

from __future__ import annotations

import zmq

from daybook.wire import SyncEvent


class Publisher:
    """Sends `SyncEvent`s. PUB never blocks: a subscriber that is not keeping up drops them,
    which is why events are desired state and the master republishes."""

    def __init__(self, socket: zmq.Socket[bytes]) -> None:
        self.socket = socket
        self.published = 0
        self.bytes_sent = 0

    def publish(self, event: SyncEvent) -> int:
        """Send one event; return its size on the wire."""
        frames = event.encode()
        self.socket.send_multipart(frames, copy=False)
        size = sum(len(frame) for frame in frames)
        self.published += 1
        self.bytes_sent += size
        return size
