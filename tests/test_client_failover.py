"""The operator client with several masters: the first that answers, a standby's pointer
to the leader, one clear error when none answers or a sync's leader went away."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import replace

import pytest
import zmq
from closed_port import refused_url
from fake_control import FakeControl, Script, silent

from daybook.config import load_settings
from daybook.errors import FleetError
from daybook.model.fleet import FleetStatus
from daybook.model.leadership import Term
from daybook.model.messages import OP_STATUS, OP_SYNC, ControlReply, ControlRequest
from daybook.model.sync import RUNNING, Sync
from daybook.net.client import ControlClient, MasterUnreachable
from daybook.net.endpoints import master_endpoint_for
from daybook.net.keys import KeyPair
from daybook.net.transport import KEY_REPLY, fetch_first_master_key

TIMEOUT_S = 0.3
M1 = Term(number=4, holder="m1:4505", since=100.0)
M2 = Term(number=5, holder="m2:4505", since=200.0)


@pytest.fixture
def masters() -> Iterator[list[FakeControl]]:
    started: list[FakeControl] = []
    yield started
    for master in started:
        master.close()


def start(masters: list[FakeControl], script: Script) -> FakeControl:
    master = FakeControl(script)
    masters.append(master)
    return master


def leader(term: Term) -> Script:
    def answer(request: ControlRequest) -> ControlReply:
        status = FleetStatus(epoch=term.number, now=1.0, hosts={})
        return ControlReply(request.request_id, status=status, leader=term)

    return answer


def standby(term: Term) -> Script:
    def answer(request: ControlRequest) -> ControlReply:
        error = f"a standby: the leader is {term.holder}"
        return ControlReply(request.request_id, error=error, leader=term, standby=True)

    return answer


def test_a_standby_points_to_the_leader(masters: list[FakeControl]) -> None:
    the_leader = start(masters, leader(M2))
    a_standby = start(masters, standby(M2))
    where = {M2.holder: the_leader.endpoint}
    with ControlClient([a_standby.endpoint], TIMEOUT_S, locate=where.get) as client:
        assert client.fleet_status().epoch == M2.number
        assert client.endpoint == the_leader.endpoint
        assert client.leader == M2
        client.fleet_status()
    assert a_standby.ops == [OP_STATUS], "the leader is asked directly from then on"
    assert the_leader.ops == [OP_STATUS, OP_STATUS]


def test_only_standbys_answering_is_their_refusal(masters: list[FakeControl]) -> None:
    a_standby = start(masters, standby(M2))
    with (
        ControlClient([a_standby.endpoint], TIMEOUT_S) as client,
        pytest.raises(FleetError, match="a standby: the leader is m2:4505"),
    ):
        client.fleet_status()


def test_every_master_is_asked_at_once_and_the_leader_answers(
    masters: list[FakeControl],
) -> None:
    # A silent master costs no answer timeout (30 s here, which asking in turn would wait
    # out before the leader): the leader's answer is taken as it comes.
    gone = start(masters, silent)
    the_leader = start(masters, leader(M1))
    with ControlClient([gone.endpoint, the_leader.endpoint], 30.0) as client:
        started = time.monotonic()
        client.fleet_status()
        client.fleet_status()
        assert time.monotonic() - started < 30.0
        assert client.endpoint == the_leader.endpoint
    assert the_leader.ops == [OP_STATUS, OP_STATUS]


def test_no_master_answering_is_one_error_naming_each(masters: list[FakeControl]) -> None:
    first, second = start(masters, silent), start(masters, silent)
    client = ControlClient([first.endpoint, second.endpoint], TIMEOUT_S)
    with client, pytest.raises(MasterUnreachable) as raised:
        client.fleet_status()
    message = str(raised.value)
    assert "cannot reach any master" in message
    assert first.endpoint in message
    assert second.endpoint in message


def test_one_silent_master_reads_as_it_always_did(masters: list[FakeControl]) -> None:
    gone = start(masters, silent)
    client = ControlClient(gone.endpoint, TIMEOUT_S)
    with (
        client,
        pytest.raises(MasterUnreachable, match=f"cannot reach the master at {gone.endpoint}"),
    ):
        client.fleet_status()


def test_a_master_that_refuses_the_connection_is_told_at_once() -> None:
    """Nothing listens on the port (a master stopped): the kernel refuses the connection,
    and the client says so instead of waiting out its answer timeout (here 600 s, which
    the test would otherwise hang on), with --wait's patience on top."""
    with refused_url() as url:
        endpoint = "tcp://" + url.removeprefix("http://")
        client = ControlClient(endpoint, 600.0)
        with (
            client,
            pytest.raises(
                MasterUnreachable,
                match=f"cannot reach the master at {endpoint}: connection refused",
            ),
        ):
            client.sync_result("0" * 32, wait_s=60.0)


def test_a_master_that_answers_is_unaffected_by_the_connection_watch(
    masters: list[FakeControl],
) -> None:
    """The watch stops at the connection: requests after it, on the same client, are
    answered as ever (each connects anew)."""
    master = start(masters, leader(M1))
    with ControlClient(master.endpoint, TIMEOUT_S) as client:
        for _ in range(3):
            assert client.fleet_status().epoch == M1.number


def running_sync(sync_id: str) -> Sync:
    return Sync(sync_id=sync_id, target="*", origin="operator", issued_at=1.0, expected=("w-1",))


def test_a_sync_whose_leader_went_away_fails_naming_the_failover(
    masters: list[FakeControl],
) -> None:
    def old_leader(request: ControlRequest) -> ControlReply | None:
        if request.op != OP_SYNC:
            return None  # gone away mid-wait
        return ControlReply(request.request_id, sync=running_sync("a" * 32), leader=M1)

    def new_leader(request: ControlRequest) -> ControlReply:
        if request.op == OP_SYNC:  # a standby while m1 still led
            return standby(M1)(request)
        error = f"unknown sync id {request.sync_id}"
        return ControlReply(request.request_id, error=error, leader=M2)

    first, second = start(masters, old_leader), start(masters, new_leader)
    client = ControlClient([first.endpoint, second.endpoint], TIMEOUT_S)
    with client, pytest.raises(FleetError) as raised:
        client.run_sync("*", wait=True, timeout_s=0.5)
    assert str(raised.value) == (
        f"the leader m1:4505 went away while sync {'a' * 32} ran; "
        "m2:4505 leads now (term 5): run the sync again"
    )


def test_a_sync_the_new_leader_knows_is_answered_by_it(masters: list[FakeControl]) -> None:
    done = running_sync("b" * 32)

    def old_leader(request: ControlRequest) -> ControlReply | None:
        if request.op != OP_SYNC:
            return None
        return ControlReply(request.request_id, sync=done, leader=M1)

    def new_leader(request: ControlRequest) -> ControlReply:
        closed = replace(done, closed_at=2.0)
        return ControlReply(request.request_id, sync=closed, leader=M2)

    first, second = start(masters, old_leader), start(masters, new_leader)
    with ControlClient([first.endpoint, second.endpoint], TIMEOUT_S) as client:
        summary = client.run_sync("*", wait=True, timeout_s=0.5)
    assert summary.state != RUNNING


def test_a_leaders_address_is_found_among_the_masters_or_parsed() -> None:
    settings = load_settings(
        env={"DAYBOOK_MASTER": "m1,m2:5505", "DAYBOOK_DATA_DIR": "/tmp/unused"}
    )
    assert master_endpoint_for(settings, "m2:5505", settings.control_port) == "tcp://m2:5507"
    assert master_endpoint_for(settings, "m3:6505", settings.control_port) == "tcp://m3:6507"
    assert master_endpoint_for(settings, "[fd00::3]:4505", settings.control_port) == (
        "tcp://[fd00::3]:4507"
    )
    assert master_endpoint_for(settings, "no port", settings.control_port) is None


def test_a_sync_waits_on_while_only_standbys_answer(masters: list[FakeControl]) -> None:
    """A standby still naming the gone leader is no failover yet: the wait ends at its
    deadline, with no claim that another master leads."""

    def old_leader(request: ControlRequest) -> ControlReply | None:
        if request.op != OP_SYNC:
            return None
        return ControlReply(request.request_id, sync=running_sync("c" * 32), leader=M1)

    first, second = start(masters, old_leader), start(masters, standby(M1))
    client = ControlClient([first.endpoint, second.endpoint], TIMEOUT_S)
    with client, pytest.raises(MasterUnreachable, match="no leader answers"):
        client.run_sync("*", wait=True, timeout_s=0.5)


def test_the_masters_key_comes_from_the_first_key_port_that_serves_it() -> None:
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    gone, serving = context.socket(zmq.ROUTER), context.socket(zmq.ROUTER)
    key = KeyPair.generate().public
    try:
        for socket in (gone, serving):
            socket.setsockopt(zmq.LINGER, 0)
            socket.bind("tcp://127.0.0.1:*")
        endpoints = [s.getsockopt_string(zmq.LAST_ENDPOINT) for s in (gone, serving)]

        def serve() -> None:
            identity, _request = serving.recv_multipart()
            serving.send_multipart([identity, KEY_REPLY, key.encode()])

        server = threading.Thread(target=serve, daemon=True)
        server.start()
        assert fetch_first_master_key(context, endpoints, TIMEOUT_S) == (key, endpoints[1])
        server.join(5.0)
        with pytest.raises(FleetError, match="no answer from the master's key port"):
            fetch_first_master_key(context, endpoints[:1], TIMEOUT_S)
    finally:
        gone.close()
        serving.close()
        context.term()


def test_kept_connections_carry_every_request_while_the_master_answers(
    masters: list[FakeControl],
) -> None:
    """A minion's periodic hello: one connection (one CURVE handshake on a real master)
    for every request, a fresh one after the master failed to answer."""
    answering = [True]

    def sometimes(request: ControlRequest) -> ControlReply | None:
        return leader(M1)(request) if answering[0] else None

    master = start(masters, sometimes)
    with ControlClient(master.endpoint, timeout_s=TIMEOUT_S, keep_connections=True) as client:
        for _ in range(3):
            client.fleet_status()
        assert len(set(master.connections)) == 1
        answering[0] = False
        with pytest.raises(MasterUnreachable):
            client.fleet_status()
        answering[0] = True
        client.fleet_status()
        client.fleet_status()
    assert len(master.connections) == 6
    assert len(set(master.connections)) == 2
    assert master.connections[3] == master.connections[0]  # the unanswered request's
    assert master.connections[4] != master.connections[3]


def test_kept_connections_with_several_masters_keep_the_ones_that_answer(
    masters: list[FakeControl],
) -> None:
    first, second = start(masters, leader(M1)), start(masters, silent)
    with ControlClient(
        [first.endpoint, second.endpoint], timeout_s=TIMEOUT_S, keep_connections=True
    ) as client:
        client.fleet_status()
        client.fleet_status()
    assert len(first.connections) == 2
    assert len(set(first.connections)) == 1
    # The silent one is asked on a fresh connection each time (if the ask got there before
    # the leader's answer closed it).
    assert len(set(second.connections)) == len(second.connections)


def test_without_kept_connections_each_request_connects_anew(masters: list[FakeControl]) -> None:
    master = start(masters, leader(M1))
    with ControlClient(master.endpoint, timeout_s=TIMEOUT_S) as client:
        client.fleet_status()
        client.fleet_status()
    assert len(set(master.connections)) == 2
