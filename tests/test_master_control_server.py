"""The master's control socket: requests it cannot decode are counted and, when their id
can still be read, answered with the reason, so the sender does not wait out its timeout."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import zmq

from daybook import wire
from daybook.model.messages import OP_STATUS, OP_SYNC, ControlReply, ControlRequest
from daybook.net.transport import Peer
from daybook_testing.waiting import wait_for
from master.control_server import ControlServer, Route

Sockets = tuple[zmq.Socket[bytes], zmq.Socket[bytes]]


@pytest.fixture
def sockets() -> Iterator[Sockets]:
    """The master's ROUTER on loopback and an operator's DEALER connected to it."""
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        router, dealer = context.socket(zmq.ROUTER), context.socket(zmq.DEALER)
        port = router.bind_to_random_port("tcp://127.0.0.1")
        dealer.connect(f"tcp://127.0.0.1:{port}")
        yield router, dealer
    finally:
        context.destroy(linger=0)


def test_a_request_out_of_bounds_is_refused_by_id_and_reading_goes_on(sockets: Sockets) -> None:
    router, dealer = sockets
    # The encoder checks nothing: a client may send what the decoder then refuses.
    dealer.send_multipart(wire.encode(ControlRequest("q1", OP_SYNC, deadline_s=90_000.0)))
    dealer.send_multipart([wire.TOPIC_REQUEST, b"\xc1"])  # no id to answer
    dealer.send_multipart(wire.encode(ControlRequest("q2", OP_STATUS)))
    server = ControlServer(router)
    received: list[tuple[Route, ControlRequest, Peer]] = []
    wait_for(lambda: bool(received.extend(server.receive_batch(10)) or received), "the good one")
    ((route, request, _peer),) = received
    assert request.request_id == "q2"
    assert server.malformed == 2
    server.reply(route, ControlReply("q2"))
    refusal, answer = (next_reply(dealer) for _ in range(2))
    assert (refusal.request_id, refusal.invalid) == ("q1", True)
    assert refusal.error is not None
    assert "'deadline_s' is out of range (90000.0)" in refusal.error
    # In order on one connection: nothing came for the frame without an id.
    assert answer.request_id == "q2"


def next_reply(dealer: zmq.Socket[bytes]) -> ControlReply:
    assert dealer.poll(5000), "no reply"
    return wire.decode_as(ControlReply, dealer.recv_multipart(), max_bytes=wire.MAX_FRAME_BYTES)
