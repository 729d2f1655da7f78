"""The master's key ring and control-socket access rules, without sockets: admission at the
handshake, host binding, salt-key style accept/reject/delete, and who may ask for what."""

from __future__ import annotations

import json
import stat
import threading
import time
from pathlib import Path

import msgpack
import pytest
import zmq
from zmq.utils.monitor import recv_monitor_message

from daybook import wire
from daybook.errors import WireError
from daybook.model.keys import KeyListing
from daybook.model.messages import (
    OP_HELLO,
    OP_KEYS_ACCEPT,
    OP_KEYS_DELETE,
    OP_KEYS_LIST,
    OP_STATUS,
    OP_SYNC,
    ControlReply,
    ControlRequest,
)
from daybook.net.keys import KeyPair
from daybook.net.transport import (
    ANONYMOUS,
    CURVE_USER_PREFIX,
    DOMAIN_CONTROL,
    DOMAIN_LOCAL,
    DOMAIN_PUBLISH,
    DOMAIN_RESULTS,
    LOCAL_USER,
    ClientCredentials,
    Peer,
    local_server,
    secure_client,
    secure_server,
)
from master import gatekeeper
from master.access import Access
from master.gatekeeper import (
    RENEW_AT_LEAST_EVERY_S,
    RENEW_WHEN_QUIET_S,
    Gatekeeper,
    ZapPort,
    renewal_due,
)
from master.keyring import Admission, KeyRing, KeySelectionError

LOCAL = Peer(LOCAL_USER, "")


def curve(pair: KeyPair, address: str = "10.0.0.9") -> Peer:
    return Peer(CURVE_USER_PREFIX + pair.public, address)


@pytest.fixture
def ring(tmp_path: Path) -> KeyRing:
    return KeyRing(tmp_path / "keyring.json", auto_accept=False)


def test_an_unknown_minion_key_is_held_off_and_recorded_pending(ring: KeyRing) -> None:
    pair = KeyPair.generate()
    for domain in (DOMAIN_PUBLISH, DOMAIN_RESULTS):
        assert ring.admit(domain, pair.public, "10.0.0.9") is Admission.HOLD
    (pending,) = ring.listing().pending
    assert (pending.public_key, pending.host, pending.address) == (pair.public, None, "10.0.0.9")
    assert ring.listing().accepted == ()
    # A hello names the host it claims; the control socket lets any key say it.
    assert ring.admit(DOMAIN_CONTROL, pair.public, "10.0.0.9") is Admission.ALLOW
    entry = ring.hello(pair.public, "web-1", "minion", "10.0.0.9")
    assert entry is not None
    assert (entry.state, entry.host) == ("pending", "web-1")
    assert not ring.speaks_for(CURVE_USER_PREFIX + pair.public, "web-1")
    assert ring.admit("some.other.domain", pair.public, "") is Admission.DENY


def test_accept_by_host_then_the_key_speaks_only_for_its_host(ring: KeyRing) -> None:
    pair = KeyPair.generate()
    ring.hello(pair.public, "web-1", "minion", "10.0.0.9")
    change = ring.accept("web-1")
    assert change.entry.state == "accepted"
    assert ring.admit(DOMAIN_PUBLISH, pair.public, "10.0.0.9") is Admission.ALLOW
    user = CURVE_USER_PREFIX + pair.public
    assert ring.speaks_for(user, "web-1")
    assert not ring.speaks_for(user, "web-2")
    assert not ring.speaks_for(LOCAL_USER, "web-1")
    assert not ring.speaks_for("", "web-1")


def test_a_key_stops_speaking_for_its_host_once_rejected_or_deleted(ring: KeyRing) -> None:
    # speaks_for remembers its answers; a change to the key must end them at once.
    pair = KeyPair.generate()
    user = CURVE_USER_PREFIX + pair.public
    ring.hello(pair.public, "web-1", "minion", "10.0.0.9")
    ring.accept("web-1")
    assert ring.speaks_for(user, "web-1")
    ring.reject("web-1")
    assert not ring.speaks_for(user, "web-1")
    ring.accept(ring.listing().rejected[0].fingerprint)
    assert ring.speaks_for(user, "web-1")
    ring.delete("web-1")
    assert not ring.speaks_for(user, "web-1")


def test_a_key_accepted_unnamed_is_bound_to_its_first_host(ring: KeyRing) -> None:
    pair, other = KeyPair.generate(), KeyPair.generate()
    ring.admit(DOMAIN_RESULTS, pair.public, "10.0.0.9")
    ring.accept(ring.listing().pending[0].fingerprint)
    assert ring.speaks_for(CURVE_USER_PREFIX + pair.public, "web-1")
    assert not ring.speaks_for(CURVE_USER_PREFIX + pair.public, "web-2")
    # Another unnamed key cannot take a host that is bound already.
    ring.admit(DOMAIN_RESULTS, other.public, "10.0.0.8")
    ring.accept(ring.listing().pending[0].fingerprint)
    assert not ring.speaks_for(CURVE_USER_PREFIX + other.public, "web-1")
    assert ring.speaks_for(CURVE_USER_PREFIX + other.public, "web-2")


def test_auto_accept_lets_new_minions_in_but_never_a_second_key_for_a_host(
    tmp_path: Path,
) -> None:
    ring = KeyRing(tmp_path / "k.json", auto_accept=True)
    first, second = KeyPair.generate(), KeyPair.generate()
    assert ring.admit(DOMAIN_PUBLISH, first.public, "10.0.0.1") is Admission.ALLOW
    assert ring.speaks_for(CURVE_USER_PREFIX + first.public, "web-1")
    entry = ring.hello(second.public, "web-1", "minion", "10.0.0.2")
    assert entry is not None
    assert entry.state == "pending"  # web-1 is taken: an operator must decide
    with pytest.raises(KeySelectionError, match="web-1 already has an accepted minion key"):
        ring.accept(entry.fingerprint)
    # Operator keys are never accepted automatically.
    operator = ring.hello(KeyPair.generate().public, "laptop", "operator", "10.0.0.3")
    assert operator is not None
    assert operator.state == "pending"


def test_selectors_that_match_nothing_or_several_change_nothing(ring: KeyRing) -> None:
    a, b = KeyPair.generate(), KeyPair.generate()
    ring.hello(a.public, "web-1", "minion", "10.0.0.1")
    ring.hello(b.public, "web-1", "minion", "10.0.0.2")
    with pytest.raises(KeySelectionError, match="2 pending keys claim the host web-1"):
        ring.accept("web-1")
    with pytest.raises(KeySelectionError, match="no key claims the host web-9"):
        ring.accept("web-9")
    with pytest.raises(KeySelectionError, match="no key has the fingerprint"):
        ring.delete(KeyPair.generate().fingerprint)
    with pytest.raises(KeySelectionError, match="neither"):
        ring.reject("../etc")
    assert len(ring.listing().pending) == 2
    ring.reject(a.fingerprint)
    assert ring.accept("web-1").entry.public_key == b.public  # the pending one


def test_reject_and_delete_report_a_cut_off_minion(ring: KeyRing) -> None:
    pair = KeyPair.generate()
    ring.hello(pair.public, "web-1", "minion", "10.0.0.1")
    assert not ring.accept("web-1").cut_off
    change = ring.reject("web-1")
    assert change.cut_off
    assert ring.admit(DOMAIN_PUBLISH, pair.public, "10.0.0.1") is Admission.HOLD
    assert not ring.speaks_for(CURVE_USER_PREFIX + pair.public, "web-1")
    ring.accept("web-1")
    change = ring.delete("web-1")
    assert change.cut_off
    assert ring.get(pair.public) is None
    # Deleted, the minion is a stranger again: pending on its next contact.
    assert ring.admit(DOMAIN_PUBLISH, pair.public, "10.0.0.1") is Admission.HOLD
    assert ring.listing().pending[0].public_key == pair.public


def test_the_pending_table_is_bounded(tmp_path: Path) -> None:
    ring = KeyRing(tmp_path / "k.json", auto_accept=False, max_pending=3)
    for _ in range(10):
        assert ring.admit(DOMAIN_RESULTS, KeyPair.generate().public, "x") is Admission.HOLD
    assert len(ring.listing().pending) == 3
    assert ring.hello(KeyPair.generate().public, "web-1", "minion", "x") is None


def test_the_key_ring_survives_a_restart_and_is_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "keyring.json"
    ring = KeyRing(path, auto_accept=False)
    minion, operator = KeyPair.generate(), KeyPair.generate()
    ring.hello(minion.public, "web-1", "minion", "10.0.0.1")
    ring.hello(operator.public, "laptop", "operator", "10.0.0.2")
    ring.accept(operator.fingerprint)
    ring.save()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = KeyRing.load(path, auto_accept=False)
    assert again.listing() == ring.listing()
    assert again.is_operator(operator.public)
    assert not again.is_operator(minion.public)
    # A tampered entry is skipped, not trusted.
    document = json.loads(path.read_text())
    document["keys"][0]["host"] = "../../etc"
    path.write_text(json.dumps(document))
    assert len(KeyRing.load(path, auto_accept=False).listing().pending) == 0


def test_zap_decisions(ring: KeyRing) -> None:
    gate = Gatekeeper(zap=None, key_socket=None, keyring=ring, public_key=None)  # type: ignore[arg-type]
    pair = KeyPair.generate()
    raw = __import__("zmq").utils.z85.decode(pair.public)
    assert gate.decide(DOMAIN_LOCAL, "localhost:0:0:1", "NULL", []) == (
        Admission.ALLOW,
        "local",
        None,
    )
    assert gate.decide(DOMAIN_LOCAL, "", "CURVE", [raw])[::2] == (Admission.DENY, "mechanism")
    assert gate.decide(DOMAIN_CONTROL, "1.2.3.4", "NULL", [])[::2] == (
        Admission.DENY,
        "mechanism",
    )
    assert gate.decide(DOMAIN_CONTROL, "1.2.3.4", "CURVE", [b"short"])[0] is Admission.DENY
    assert gate.decide(DOMAIN_CONTROL, "1.2.3.4", "CURVE", [raw]) == (
        Admission.ALLOW,
        CURVE_USER_PREFIX + pair.public,
        None,
    )
    # Unknown on a minion's socket: recorded pending, and held off until accepted.
    assert gate.decide(DOMAIN_RESULTS, "1.2.3.4", "CURVE", [raw])[::2] == (
        Admission.HOLD,
        "pending",
    )
    ring.reject(pair.fingerprint)
    assert gate.decide(DOMAIN_PUBLISH, "1.2.3.4", "CURVE", [raw]).refusal == "rejected"
    ring.accept(pair.fingerprint)
    assert gate.decide(DOMAIN_PUBLISH, "1.2.3.4", "CURVE", [raw]).refusal is None


def test_the_idle_gatekeeper_wakes_to_save_changes_made_on_other_threads(
    tmp_path: Path,
) -> None:
    """Idle, the gatekeeper sleeps until a request or a wake-up: a change the master loop
    makes (a hello) still reaches the file, and a stop still ends the thread."""
    ring = KeyRing(tmp_path / "keyring.json", auto_accept=False)
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    zap = ZapPort(context)
    gate = Gatekeeper(zap, None, ring, None)
    thread = threading.Thread(target=gate.run)
    thread.start()
    try:
        pair = KeyPair.generate()
        ring.hello(pair.public, "web-1", "minion", "10.0.0.9")
        deadline = time.monotonic() + 10.0
        pause = threading.Event()
        while not (tmp_path / "keyring.json").exists():
            assert time.monotonic() < deadline, "the key ring was never saved"
            pause.wait(0.01)
        saved = KeyRing.load(tmp_path / "keyring.json", auto_accept=False)
        assert [e.public_key for e in saved.listing().pending] == [pair.public]
        assert not ring.dirty
    finally:
        gate.stop()
        thread.join(timeout=10.0)
        zap.close()
        context.term()
    assert not thread.is_alive()


@pytest.mark.parametrize("link", ["curve", "local"])
def test_no_handshake_gets_through_while_no_zap_handler_is_bound(link: str, tmp_path: Path) -> None:
    """Never let through (CURVE refused at once, the local socket's NULL dropped once its
    handshake times out): what makes it safe for the gatekeeper to open its socket anew."""
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    server, client = context.socket(zmq.PULL), context.socket(zmq.PUSH)
    monitor = server.get_monitor_socket(
        zmq.EVENT_HANDSHAKE_SUCCEEDED
        | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
        | zmq.EVENT_DISCONNECTED
    )
    try:
        if link == "curve":
            master = KeyPair.generate()
            secure_server(server, master, DOMAIN_RESULTS)
            endpoint = f"tcp://127.0.0.1:{server.bind_to_random_port('tcp://127.0.0.1')}"
            secure_client(client, ClientCredentials(KeyPair.generate(), master.public))
        else:
            server.setsockopt(zmq.HANDSHAKE_IVL, 200)
            local_server(server)
            endpoint = f"ipc://{tmp_path}/control.sock"
            server.bind(endpoint)
        client.connect(endpoint)
        client.send(b"let me in", zmq.NOBLOCK)
        assert monitor.poll(10_000), "the handshake was neither refused nor let through"
        event = recv_monitor_message(monitor)
        assert event["event"] != zmq.EVENT_HANDSHAKE_SUCCEEDED
        assert not server.poll(0)
    finally:
        server.disable_monitor()
        for socket in (monitor, client, server):
            socket.close(linger=0)
        context.term()


def test_the_zap_socket_is_renewed_after_a_quiet_second_or_thirty_busy_ones() -> None:
    assert renewal_due(None, 5.0) is None  # nobody let in since the last renewal
    assert renewal_due(100.0, 100.0) == 100.0 + RENEW_WHEN_QUIET_S
    assert renewal_due(100.0, 110.0) == 110.0 + RENEW_WHEN_QUIET_S
    # Handshakes that keep coming do not put it off for ever.
    assert renewal_due(100.0, 129.9) == 100.0 + RENEW_AT_LEAST_EVERY_S


def test_the_gatekeeper_renews_its_socket_once_handshakes_are_over(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A renewal ends the ZAP pipes of the connections let in, not the connections: they
    go on with their User-Id, and the next handshake is answered by the new socket."""
    monkeypatch.setattr(gatekeeper, "RENEW_WHEN_QUIET_S", 0.05)
    ring = KeyRing(tmp_path / "keyring.json", auto_accept=True)
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    zap = ZapPort(context)
    master = KeyPair.generate()
    server = context.socket(zmq.PULL)
    secure_server(server, master, DOMAIN_RESULTS)
    port = server.bind_to_random_port("tcp://127.0.0.1")
    gate = Gatekeeper(zap, None, ring, None)
    thread = threading.Thread(target=gate.run)
    thread.start()
    clients: list[zmq.Socket[bytes]] = []

    def connect(pair: KeyPair) -> zmq.Socket[bytes]:
        client = context.socket(zmq.PUSH)
        secure_client(client, ClientCredentials(pair, master.public))
        client.connect(f"tcp://127.0.0.1:{port}")
        clients.append(client)
        return client

    def received() -> tuple[bytes, str]:
        assert server.poll(10_000), "nothing arrived"
        frame = server.recv(copy=False)
        return frame.bytes, frame.get("User-Id")

    try:
        first, second = KeyPair.generate(), KeyPair.generate()
        early = connect(first)
        early.send(b"one")
        assert received() == (b"one", CURVE_USER_PREFIX + first.public)
        deadline = time.monotonic() + 10.0
        while gate.counters["renewals"] < 1:
            assert time.monotonic() < deadline, "the ZAP socket was never renewed"
            threading.Event().wait(0.01)
        early.send(b"two")
        assert received() == (b"two", CURVE_USER_PREFIX + first.public)
        connect(second).send(b"three")
        assert received() == (b"three", CURVE_USER_PREFIX + second.public)
        assert gate.counters["allowed"] == 2
    finally:
        gate.stop()
        thread.join(timeout=10.0)
        for socket in (*clients, server):
            socket.close(linger=0)
        zap.close()
        context.term()
    assert not thread.is_alive()


# -- access to the control socket -----------------------------------------------------------------


def _request(op: str, **fields: object) -> ControlRequest:
    return ControlRequest("r1", op, **fields)  # type: ignore[arg-type]


def test_operators_need_the_local_socket_or_an_accepted_operator_key(ring: KeyRing) -> None:
    access = Access(ring)
    minion, operator = KeyPair.generate(), KeyPair.generate()
    ring.hello(minion.public, "web-1", "minion", "10.0.0.1")
    ring.accept("web-1")
    assert access.refusal(_request(OP_SYNC), LOCAL) is None
    assert access.refusal(_request(OP_SYNC), ANONYMOUS) is not None
    assert "minion may not" in (access.refusal(_request(OP_STATUS), curve(minion)) or "")
    # An unknown operator key is refused, and recorded pending under the name it sends.
    refusal = access.refusal(_request(OP_SYNC, host="laptop"), curve(operator))
    assert refusal is not None
    assert "pending" in refusal
    (pending,) = ring.listing().pending
    assert (pending.role, pending.host) == ("operator", "laptop")
    ring.accept(pending.fingerprint)
    assert access.refusal(_request(OP_SYNC), curve(operator)) is None
    # Keys are managed on the local socket only, even by an accepted operator.
    assert access.refusal(_request(OP_KEYS_LIST), curve(operator)) is not None
    assert access.refusal(_request(OP_KEYS_LIST), LOCAL) is None
    # Hello is for CURVE peers.
    hello = _request(OP_HELLO, host="web-2", role="minion")
    assert access.refusal(hello, LOCAL) is not None
    assert access.refusal(hello, curve(KeyPair.generate())) is None
    assert access.refused == 5


def test_without_keys_only_the_local_socket_operates() -> None:
    access = Access(None)
    assert access.refusal(_request(OP_SYNC), LOCAL) is None
    assert access.refusal(_request(OP_SYNC), ANONYMOUS) is not None
    assert access.refusal(_request(OP_HELLO, host="a", role="minion"), ANONYMOUS) is not None
    answer = access.answer(_request(OP_KEYS_LIST), LOCAL)
    assert answer.reply.error is not None


def test_key_answers(ring: KeyRing) -> None:
    access = Access(ring)
    pair = KeyPair.generate()
    hello = access.answer(_request(OP_HELLO, host="web-1", role="minion"), curve(pair))
    assert hello.reply.key is not None
    assert (hello.reply.key.state, hello.reply.key.host) == ("pending", "web-1")
    bad = access.answer(_request(OP_KEYS_ACCEPT, selector="web-7"), LOCAL)
    assert bad.reply.invalid
    assert bad.reply.error is not None
    accepted = access.answer(_request(OP_KEYS_ACCEPT, selector="web-1"), LOCAL)
    assert accepted.reply.key is not None
    assert accepted.reply.key.state == "accepted"
    assert not accepted.cut_off
    deleted = access.answer(_request(OP_KEYS_DELETE, selector=pair.fingerprint), LOCAL)
    assert (deleted.cut_off, deleted.host) == (True, "web-1")
    listing = access.answer(_request(OP_KEYS_LIST), LOCAL).reply.keys
    assert listing == KeyListing()


# -- the wire ------------------------------------------------------------------------------------


def test_key_messages_round_trip_and_are_validated() -> None:
    ring = KeyRing(None, auto_accept=True)
    pair = KeyPair.generate()
    ring.hello(pair.public, "web-1", "minion", "10.0.0.1")
    reply = ControlReply("r1", keys=ring.listing(), key=ring.listing().accepted[0])
    assert wire.decode(ControlReply, wire.encode(reply)[1]) == reply
    request = ControlRequest("r2", OP_HELLO, host="web-1", role="minion")
    assert wire.decode(ControlRequest, wire.encode(request)[1]) == request
    # Built by hand: the model itself refuses to make most of these.
    for bad in (
        {"op": OP_HELLO, "host": "web-1"},  # no role
        {"op": OP_HELLO, "host": "web-1", "role": "admin"},
        {"op": OP_KEYS_ACCEPT},  # no selector
        {"op": OP_KEYS_DELETE, "selector": "../../etc/passwd"},
        {"op": OP_HELLO, "host": "web 1", "role": "minion"},
        {"op": "keys.export"},
    ):
        payload = msgpack.packb({"v": 1, "request_id": "r3", "wait_s": 0.0, **bad})
        with pytest.raises(WireError):
            wire.decode(ControlRequest, payload)
