"""The collector: the master's PULL socket, receiving reports and heartbeats from minions."""

from __future__ import annotations

import logging
from collections.abc import Callable

import zmq

from daybook.errors import WireError
from daybook.model.messages import Heartbeat
from daybook.model.results import Report
from daybook.net.transport import peer_of, user_id_of
from daybook.wire import MAX_MESSAGE_BYTES, decode_frames, joined_payload

log = logging.getLogger(__name__)


# Whether the peer with this User-Id may speak for this host (the key ring's `speaks_for`).
SenderCheck = Callable[[str, str], bool]


class Collector:
    """Receives typed messages; a malformed frame is counted and dropped, never raised.

    With `speaks_for`, a message is kept only if the key that sent it (the User-Id the ZAP
    handler gave its connection) is bound to the host the message names: a minion cannot
    report or heartbeat for another host. Without it (insecure transport) every host goes.
    """

    def __init__(self, socket: zmq.Socket[bytes], speaks_for: SenderCheck | None = None) -> None:
        self.socket = socket
        self._speaks_for = speaks_for
        self.received = 0
        self.malformed = 0
        self.impostors = 0

    def receive_batch(self, limit: int) -> list[tuple[Report | Heartbeat, bytes]]:
        """Everything waiting, up to `limit` messages, without blocking; each with its
        payload as received."""
        messages: list[tuple[Report | Heartbeat, bytes]] = []
        while len(messages) < limit:
            try:
                parts = self.socket.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            frames = [part.bytes for part in parts]
            try:
                message = decode_frames(frames, max_bytes=MAX_MESSAGE_BYTES)
                if not isinstance(message, Report | Heartbeat):
                    raise WireError(f"unexpected {type(message).__name__} from a minion")
            except WireError as exc:
                self.malformed += 1
                log.debug("dropped a malformed message from a minion: %s", exc)
                continue
            speaks_for = self._speaks_for
            if speaks_for is not None and not speaks_for(user_id_of(parts[-1]), message.host):
                self.impostors += 1
                log.info(
                    "dropped a %s for %s from %s: its key is not bound to that host",
                    frames[0].decode(errors="replace"),
                    message.host,
                    peer_of(parts[-1]).address or "an unknown address",
                )
                continue
            messages.append((message, joined_payload(frames)))
        self.received += len(messages)
        return messages
