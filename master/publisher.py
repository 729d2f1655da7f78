"""The publisher: the master's PUB socket, sending sync events to every subscribed minion."""

from __future__ import annotations

import threading
import time

import zmq

from daybook import wire
from daybook.errors import FleetError
from daybook.model.messages import SyncEvent

# How long `drop_subscribers` tries to bind the port again while the OS releases it.
REBIND_TIMEOUT_S = 2.0


class Publisher:
    """Sends `SyncEvent`s. PUB never blocks: a subscriber that is not keeping up drops them,
    which is why events are desired state and the master republishes."""

    def __init__(self, socket: zmq.Socket[bytes]) -> None:
        self.socket = socket
        self.published = 0
        self.bytes_sent = 0

    def publish(self, event: SyncEvent) -> int:
        """Send one event; return its size on the wire."""
        frames = wire.encode(event)
        self.socket.send_multipart(frames, copy=False)
        size = sum(len(frame) for frame in frames)
        self.published += 1
        self.bytes_sent += size
        return size

    def drop_subscribers(self) -> None:
        """Disconnect every subscriber, so that each must pass the key check again.

        ZeroMQ checks a key only when a connection starts, and PUB cannot drop one peer;
        but unbinding an endpoint ends every connection accepted through it. Minions whose
        keys are still accepted reconnect within moments; a minion whose key was deleted
        or rejected is held off from then on.
        """
        endpoint = self.socket.getsockopt_string(zmq.LAST_ENDPOINT)
        self.socket.unbind(endpoint)
        deadline = time.monotonic() + REBIND_TIMEOUT_S
        pause = threading.Event()
        while True:
            try:
                self.socket.bind(endpoint)
                return
            except zmq.ZMQError as exc:
                # The listener closes on ZeroMQ's I/O thread: the port frees in a moment.
                if exc.errno != zmq.EADDRINUSE or time.monotonic() > deadline:
                    raise FleetError(f"cannot listen on {endpoint} again: {exc}") from None
                pause.wait(0.005)
