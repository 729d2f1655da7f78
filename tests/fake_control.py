"""Fake masters' control sockets on loopback: each answers requests as its script says."""

from __future__ import annotations

import threading
from collections.abc import Callable

import zmq

from daybook import wire
from daybook.model.messages import MAX_FRAME_BYTES, ControlReply, ControlRequest
from daybook.wire import decode_as

# A script: the reply to a request, or None to stay silent (a master gone away).
Script = Callable[[ControlRequest], ControlReply | None]


class FakeControl:
    """A ROUTER socket bound on 127.0.0.1 answering on a thread of its own until closed."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.requests: list[ControlRequest] = []
        # The ROUTER's name for the connection each request came on.
        self.connections: list[bytes] = []
        self._context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self._socket = self._context.socket(zmq.ROUTER)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.bind("tcp://127.0.0.1:*")
        self.endpoint = self._socket.getsockopt_string(zmq.LAST_ENDPOINT)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @property
    def ops(self) -> list[str]:
        return [request.op for request in self.requests]

    def _run(self) -> None:
        while not self._stop.is_set():
            if not self._socket.poll(20, zmq.POLLIN):
                continue
            identity, *frames = self._socket.recv_multipart()
            request = decode_as(ControlRequest, frames, max_bytes=MAX_FRAME_BYTES)
            self.requests.append(request)
            self.connections.append(identity)
            reply = self.script(request)
            if reply is not None:
                self._socket.send_multipart([identity, *wire.encode(reply)])

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5.0)
        self._socket.close()
        self._context.term()


def silent(_request: ControlRequest) -> None:
    return None
