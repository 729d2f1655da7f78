"""The control server: the master's ROUTER socket, answering operator requests."""

from __future__ import annotations

import logging

import zmq

from daybook import wire
from daybook.errors import WireError
from daybook.model.messages import ControlReply, ControlRequest
from daybook.net.transport import Peer, peer_of
from daybook.wire import MAX_MESSAGE_BYTES, decode_as

log = logging.getLogger(__name__)

# A ROUTER prefixes each message with the sender's identity (and a REQ client adds an empty
# delimiter); that envelope goes back in front of the reply.
Route = tuple[bytes, ...]


class ControlServer:
    """Receives `ControlRequest`s with their return route and their sender, as the transport
    vouches for it (`Peer`), and sends `ControlReply`s."""

    def __init__(self, socket: zmq.Socket[bytes]) -> None:
        self.socket = socket
        self.malformed = 0

    def receive_batch(self, limit: int) -> list[tuple[Route, ControlRequest, Peer]]:
        requests: list[tuple[Route, ControlRequest, Peer]] = []
        for _ in range(limit):
            try:
                parts = self.socket.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            frames = [part.bytes for part in parts]
            split = 2 if len(frames) > 3 and frames[1] == b"" else 1
            route, body = tuple(frames[:split]), frames[split:]
            try:
                request = decode_as(ControlRequest, body, max_bytes=MAX_MESSAGE_BYTES)
            except WireError as exc:
                self.malformed += 1
                log.info("dropped a malformed operator request: %s", exc)
                continue
            requests.append((route, request, peer_of(parts[-1])))
        return requests

    def reply(self, route: Route, reply: ControlReply) -> None:
        try:
            self.socket.send_multipart([*route, *wire.encode(reply)], zmq.NOBLOCK)
        except zmq.Again:
            log.info("an operator went away before its answer was ready")
