"""The control server: the master's ROUTER socket, answering operator requests."""

from __future__ import annotations

import logging

import zmq

from daybook import wire
from daybook.errors import WireError
from daybook.model.messages import ControlReply, ControlRequest
from daybook.model.rules import clip_text
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
                log.info("refused a malformed operator request: %s", exc)
                self._refuse(route, body, exc)
                continue
            requests.append((route, request, peer_of(parts[-1])))
        return requests

    def _refuse(self, route: Route, body: list[bytes], problem: WireError) -> None:
        """Answer a request that failed to decode, if its id can still be read: its sender
        learns why at once (a field out of range, say) rather than waiting out its timeout
        and reporting the master unreachable. Nothing is acted on, so it is bad input."""
        request_id = wire.request_id_of(body, max_bytes=MAX_MESSAGE_BYTES)
        if request_id is not None:
            self.reply(route, ControlReply(request_id, error=clip_text(str(problem)), invalid=True))

    def reply(self, route: Route, reply: ControlReply) -> None:
        try:
            self.socket.send_multipart([*route, *wire.encode(reply)], zmq.NOBLOCK)
        except zmq.Again:
            log.info("an operator went away before its answer was ready")
