"""Transport security on real sockets (127.0.0.1, ports read back): key acceptance, identity
bound to keys, operator authentication, plaintext refused, the master key pinned.

The master runs in-process (`RunningMaster`); minions are scripted (`ScriptedMinion`) where
a test needs to see exactly which events arrive, and real (`run_minion` on a thread) where
it is about what a minion does by itself: say hello, pin the master's key, notice a change.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import sqlite3
import stat
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import pytest
import zmq
from archives import make_asset
from inprocess_fleet import (
    DEADLINE_S,
    RunningMaster,
    ScriptedMinion,
    fleet_settings,
    live_minions,
    minion_keypair,
    sample,
    scrape_metrics,
)

from daybook import wire
from daybook.cli.main import main
from daybook.config import Settings
from daybook.errors import FleetError
from daybook.model.keys import Key
from daybook.model.messages import Heartbeat, SyncEvent
from daybook.model.names import AssetRef
from daybook.model.state import DesiredState
from daybook.net.client import ControlClient, MasterUnreachable
from daybook.net.endpoints import local_socket_path
from daybook.net.keys import (
    KEYRING_FILE,
    PINNED_MASTER_KEY,
    KeyPair,
    keys_dir,
    private_dir,
    read_public_key,
)
from daybook.net.transport import ClientCredentials
from daybook.registry.base import open_registry
from daybook.stopping import StopFlag
from daybook.store.local import LocalStore
from daybook.views import status_json
from daybook_testing.waiting import wait_for
from master.keyring import KeyRing
from minion.process import run_minion

T = TypeVar("T")
# A well-formed state, for reports that must be dropped for who sent them, not for how.
EMPTY_STATE = wire.encode_state(DesiredState({}, {}))
# The master republishes every 0.5 s (fleet_settings): a subscriber that would get events
# has had three chances in this long.
SILENCE_MS = 1500


def _push(root: Path, service: str, version: str) -> None:
    path = make_asset(root, service, version)
    LocalStore(root / "store").upload(
        path, AssetRef(service, version), sha256=hashlib.sha256(path.read_bytes()).hexdigest()
    )


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    _push(tmp_path, "web", "1")
    open_registry(f"file://{tmp_path / 'mappings.json'}").update("web-*", lambda _: ("web",))
    return replace(fleet_settings(tmp_path), auto_accept=False)


@pytest.fixture
def trusting_master(settings: Settings) -> Iterator[RunningMaster]:
    running = RunningMaster(replace(settings, auto_accept=True))
    yield running
    if running.thread.is_alive():
        running.shutdown()


def _key(master: RunningMaster, public_key: str, state: str) -> Key | None:
    with master.client() as client:
        listing = client.keys()
    return next((k for k in getattr(listing, state) if k.public_key == public_key), None)


def _accept(master: RunningMaster, *minions: ScriptedMinion) -> None:
    """Wait for each minion's key to be pending, accept it, and wait for its first event."""
    for minion in minions:
        pending = wait_for(
            lambda m=minion: _key(master, m.keypair.public, "pending"), f"{minion.host} pending"
        )
        with master.client() as client:
            client.change_key("keys.accept", pending.fingerprint)
    for minion in minions:
        minion.next_event()
        minion.heartbeat()
    for minion in minions:
        wait_for(lambda m=minion: _hosts(master).get(m.host, {}).get("up"), f"{minion.host} up")


def _hosts(master: RunningMaster) -> dict[str, Any]:
    with master.client() as client:
        hosts: dict[str, Any] = status_json(client.fleet_status())["hosts"]
    return hosts


def _operator_syncs(master: RunningMaster) -> int:
    db = sqlite3.connect(f"{(master.settings.data_dir / 'master.db').as_uri()}?mode=ro", uri=True)
    try:
        (count,) = db.execute("SELECT count(*) FROM syncs WHERE origin = 'operator'").fetchone()
    finally:
        db.close()
    return int(count)


def _events_until(minion: ScriptedMinion, sync_id: str) -> list[SyncEvent]:
    events = [minion.next_event()]
    while events[-1].sync_id != sync_id:
        events.append(minion.next_event())
    return events


# -- key acceptance --------------------------------------------------------------------------------


def test_an_unaccepted_minion_gets_nothing_until_its_key_is_accepted(
    context: zmq.Context[zmq.Socket[bytes]], master: RunningMaster
) -> None:
    stranger = ScriptedMinion(context, master, "web-1")
    stranger.heartbeat()
    pending = wait_for(lambda: _key(master, stranger.keypair.public, "pending"), "pending key")
    assert pending.address == "127.0.0.1"
    assert pending.role == "minion"
    # Its heartbeat and a report are dropped; no event reaches it while events flow.
    with master.client() as client:
        summary = client.run_sync(None, wait=False, timeout_s=5.0)
    assert summary.expected == ()
    fake = SyncEvent.carrying(
        EMPTY_STATE, epoch=1, seq=1, sync_id=summary.sync_id, target="*", issued_at=time.time()
    )
    stranger.report(fake)
    assert not stranger.sub.poll(SILENCE_MS)
    assert "web-1" not in _hosts(master)

    with master.client() as client:
        accepted = client.change_key("keys.accept", pending.fingerprint)
    assert accepted.state == "accepted"
    event = stranger.next_event()  # let in when it next knocks, without a restart
    stranger.heartbeat()
    stranger.report(event)
    hosts = wait_for(lambda: (h := _hosts(master)).get("web-1", {}).get("last_sync") and h, "up")
    assert hosts["web-1"]["up"] is True
    # Its first message bound the host to the key.
    bound = _key(master, stranger.keypair.public, "accepted")
    assert bound is not None
    assert bound.host == "web-1"
    stranger.close()


def test_deleting_a_key_cuts_the_minion_off_at_once(
    context: zmq.Context[zmq.Socket[bytes]], settings: Settings
) -> None:
    # Both keys accepted before the master starts, as an operator did in an earlier run.
    path = keys_dir(settings.data_dir) / KEYRING_FILE
    private_dir(path.parent)
    KeyRing(
        path,
        auto_accept=False,
        entries=[
            Key(minion_keypair(host).public, "minion", "accepted", host, None, 0.0, 0.0)
            for host in ("web-1", "web-2")
        ],
    ).save()
    master = RunningMaster(settings)
    try:
        _cut_off_one_of_two(context, master)
    finally:
        master.shutdown()


def _cut_off_one_of_two(context: zmq.Context[zmq.Socket[bytes]], master: RunningMaster) -> None:
    doomed, keeper = live_minions(context, master, "web-1", "web-2")

    with master.client() as client:
        client.change_key("keys.delete", "web-1")
        # Down at once: a sync no longer waits for it.
        assert not client.fleet_status().hosts["web-1"].up
        summary = client.run_sync(None, wait=False, timeout_s=5.0)
    assert summary.expected == ("web-2",)
    # The others reconnect and get the new sync; the deleted minion gets nothing new...
    _events_until(keeper, summary.sync_id)
    while doomed.sub.poll(SILENCE_MS):
        assert doomed.next_event().sync_id != summary.sync_id
    # ...and what it sends is dropped.
    doomed.heartbeat()
    doomed.report(
        SyncEvent.carrying(
            EMPTY_STATE, epoch=1, seq=1, sync_id=summary.sync_id, target="*", issued_at=time.time()
        )
    )
    keeper.report(_events_until(keeper, summary.sync_id)[-1])
    with master.client() as client:
        wait_for(lambda: client.sync_result(summary.sync_id).complete, "web-2's report")
        assert set(client.sync_result(summary.sync_id).results) == {"web-2"}
    assert _hosts(master)["web-1"]["up"] is False
    # A deleted key is a stranger again: pending on its next contact, not accepted.
    wait_for(lambda: _key(master, doomed.keypair.public, "pending"), "pending again")
    doomed.close()
    keeper.close()


def test_a_minion_cannot_speak_for_another_host(
    context: zmq.Context[zmq.Socket[bytes]], trusting_master: RunningMaster
) -> None:
    master = trusting_master
    web1, web2 = live_minions(context, master, "web-1", "web-2")
    # web-1's key claiming web-3, and a new key claiming web-1.
    liar = ScriptedMinion(context, master, "web-3", keypair=minion_keypair("web-1"))
    impostor = ScriptedMinion(context, master, "web-1", keypair=KeyPair.generate())
    with master.client() as client:
        summary = client.run_sync(None, wait=False, timeout_s=5.0)
    assert summary.expected == ("web-1", "web-2")
    event = web2.event_for(summary.sync_id)
    liar.heartbeat()
    liar.report(event, report_id="liar")
    impostor.heartbeat()
    impostor.report(event, ok=False, report_id="impostor")
    web2.report(event)
    with master.client() as client:
        wait_for(lambda: "web-2" in client.sync_result(summary.sync_id).results, "web-2")
        assert "web-1" not in client.sync_result(summary.sync_id).results
        web1.report(web1.event_for(summary.sync_id), report_id="real")
        result = wait_for(
            lambda: (r := client.sync_result(summary.sync_id)).complete and r, "web-1's report"
        )
    assert result.results["web-1"].report_id == "real"
    assert result.ok
    assert "web-3" not in _hosts(master)
    # The impostor's key was let in (auto-accept) but holds no host: it claims one taken.
    impostor_key = _key(master, impostor.keypair.public, "accepted")
    assert impostor_key is not None
    assert impostor_key.host is None
    for minion in (web1, web2, liar, impostor):
        minion.close()


# -- operators -----------------------------------------------------------------------------------


def test_an_operator_without_an_accepted_key_cannot_sync(
    context: zmq.Context[zmq.Socket[bytes]], trusting_master: RunningMaster
) -> None:
    master = trusting_master
    (web1,) = live_minions(context, master, "web-1")
    control = master.endpoints["control"]
    operator = KeyPair.generate()

    def curve_client(keypair: KeyPair, server_key: str | None = None) -> ControlClient:
        credentials = ClientCredentials(keypair, server_key or master.public_key)
        return ControlClient(control, 1.0, credentials=credentials, host="laptop")

    with curve_client(operator) as client, pytest.raises(FleetError, match="is pending"):
        client.run_sync(None, wait=False, timeout_s=1.0)
    # A minion's key, even accepted, is no operator key.
    with curve_client(web1.keypair) as client, pytest.raises(FleetError, match="minion may not"):
        client.fleet_status()
    # Plaintext, or a master key that is not the master's: no answer at all.
    with ControlClient(control, 0.5) as client, pytest.raises(MasterUnreachable):
        client.run_sync(None, wait=False, timeout_s=0.5)
    with (
        curve_client(operator, KeyPair.generate().public) as client,
        pytest.raises(MasterUnreachable),
    ):
        client.fleet_status()
    assert _operator_syncs(master) == 0

    # The operator's key was recorded pending, under the name it sent; accepted, it may sync.
    pending = _key(master, operator.public, "pending")
    assert pending is not None
    assert (pending.role, pending.host) == ("operator", "laptop")
    with master.client() as client:
        client.change_key("keys.accept", pending.fingerprint)
    with curve_client(operator) as client:
        summary = client.run_sync(None, wait=False, timeout_s=1.0)
        assert summary.expected == ("web-1",)
        # Key management stays on the master's local socket.
        with pytest.raises(FleetError, match="local socket"):
            client.keys()
    assert _operator_syncs(master) == 1
    web1.close()


def test_plaintext_minions_are_refused(
    context: zmq.Context[zmq.Socket[bytes]], trusting_master: RunningMaster
) -> None:
    master = trusting_master
    (web1,) = live_minions(context, master, "web-1")
    sub = context.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(master.endpoints["publish"])
    push = context.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 0)
    push.connect(master.endpoints["results"])
    push.send_multipart(
        wire.encode(Heartbeat("web-9", "b", time.time(), time.time(), 0, 0, None, busy=False))
    )
    with master.client() as client:
        summary = client.run_sync(None, wait=False, timeout_s=5.0)
    web1.event_for(summary.sync_id)  # events flow to the CURVE minion...
    assert not sub.poll(SILENCE_MS)  # ...and none to the plaintext one
    assert "web-9" not in _hosts(master)
    sub.close()
    push.close()
    web1.close()


# -- what the checks turn away, counted at /metrics ---------------------------------------------


def _counted(master: RunningMaster, name: str, at_least: float = 1.0, **labels: str) -> float:
    """Wait until /metrics, read over HTTP, counts `name` at least `at_least` times."""

    def value() -> float | None:
        found = sample(scrape_metrics(master), name, **labels)
        return found if found is not None and found >= at_least else None

    return wait_for(value, f"{name}{labels} to reach {at_least:g}")


def test_impostor_frames_are_counted_at_metrics(
    context: zmq.Context[zmq.Socket[bytes]], trusting_master: RunningMaster
) -> None:
    master = trusting_master
    (web1,) = live_minions(context, master, "web-1")
    before = scrape_metrics(master)
    assert sample(before, "daybook_impostor_frames_total") == 0
    # web-1's own key, sending a heartbeat and a report for another host.
    liar = ScriptedMinion(context, master, "web-2", keypair=minion_keypair("web-1"))
    liar.heartbeat()
    liar.report(
        SyncEvent.carrying(
            EMPTY_STATE, epoch=1, seq=1, sync_id="f" * 32, target="*", issued_at=time.time()
        )
    )
    assert _counted(master, "daybook_impostor_frames_total", at_least=2) == 2
    assert "web-2" not in _hosts(master)
    for minion in (web1, liar):
        minion.close()


def test_refused_operator_requests_are_counted_by_operation_at_metrics(
    context: zmq.Context[zmq.Socket[bytes]], trusting_master: RunningMaster
) -> None:
    master = trusting_master
    (web1,) = live_minions(context, master, "web-1")
    name = "daybook_refused_operator_requests_total"
    before = scrape_metrics(master)
    assert all(sample(before, name, op=op) == 0 for op in ("sync", "status", "keys.list"))

    def curve_client(keypair: KeyPair) -> ControlClient:
        credentials = ClientCredentials(keypair, master.public_key)
        return ControlClient(master.endpoints["control"], 1.0, credentials=credentials)

    # A key the master has not accepted, and an accepted minion's key, asking as operators.
    with curve_client(KeyPair.generate()) as client, pytest.raises(FleetError):
        client.run_sync(None, wait=False, timeout_s=1.0)
    # `push` telling the master of new assets is an operator's request like the others.
    with curve_client(KeyPair.generate()) as client, pytest.raises(FleetError):
        client.store_changed()
    with curve_client(web1.keypair) as client:
        with pytest.raises(FleetError, match="minion may not"):
            client.fleet_status()
        with pytest.raises(FleetError, match="local socket"):
            client.keys()
    assert _counted(master, name, op="sync") == 1
    after = scrape_metrics(master)
    assert sample(after, name, op="status") == 1
    assert sample(after, name, op="keys.list") == 1
    assert sample(after, name, op="sync_result") == 0
    assert sample(after, name, op="store.changed") == 1
    web1.close()


def test_refused_handshakes_are_counted_by_reason_at_metrics(
    context: zmq.Context[zmq.Socket[bytes]], master: RunningMaster
) -> None:
    name = "daybook_refused_handshakes_total"
    before = scrape_metrics(master)
    assert sample(before, name, reason="pending") == 0
    assert sample(before, name, reason="rejected") == 0
    # An unknown key knocks on the minions' sockets: recorded pending and held off...
    stranger = ScriptedMinion(context, master, "web-1")
    stranger.heartbeat()
    _counted(master, name, reason="pending")
    pending = wait_for(lambda: _key(master, stranger.keypair.public, "pending"), "pending key")
    # ...and once rejected, refused as it knocks again.
    with master.client() as client:
        client.change_key("keys.reject", pending.fingerprint)
    _counted(master, name, reason="rejected")
    assert not stranger.sub.poll(SILENCE_MS)
    stranger.close()


# -- the local socket and files ------------------------------------------------------------------


def test_secrets_and_the_local_socket_are_owner_only(master: RunningMaster) -> None:
    data_dir = master.settings.data_dir
    socket_path = local_socket_path(data_dir)
    assert master.endpoints["local"] == f"ipc://{socket_path}"
    assert stat.S_IMODE(socket_path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(socket_path.stat().st_mode) == 0o600
    keys = keys_dir(data_dir)
    assert stat.S_IMODE(keys.stat().st_mode) == 0o700
    assert stat.S_IMODE((keys / "master.key_secret").stat().st_mode) == 0o600
    with master.client() as client:
        assert client.keys().accepted == ()
    master.shutdown()
    assert not socket_path.exists()
    ring = keys / "keyring.json"
    assert not ring.exists() or stat.S_IMODE(ring.stat().st_mode) == 0o600


def test_insecure_transport_is_plaintext_but_operators_stay_local(
    context: zmq.Context[zmq.Socket[bytes]], settings: Settings
) -> None:
    master = RunningMaster(replace(settings, insecure_transport=True))
    try:
        assert "key" not in master.endpoints
        (web1,) = live_minions(context, master, "web-1")
        with master.client() as client:
            summary = client.run_sync(None, wait=False, timeout_s=5.0)
        web1.event_for(summary.sync_id)
        with (
            ControlClient(master.endpoints["control"], 1.0) as client,
            pytest.raises(FleetError, match="local socket"),
        ):
            client.fleet_status()
        web1.close()
    finally:
        master.shutdown()


# -- real minions --------------------------------------------------------------------------------


class MinionThread:
    """`run_minion` on a thread, as `daybook minion` would run it."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.stop = StopFlag()
        self.exit_code: int | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        self.exit_code = run_minion(self.settings, stop=self.stop, drain_timeout_s=2.0)

    def installed(self, service: str) -> list[str]:
        try:
            return sorted(p.name for p in (self.settings.install_dir / service).iterdir())
        except FileNotFoundError:
            return []

    def shutdown(self) -> None:
        self.stop.set()
        self.thread.join(DEADLINE_S)
        assert not self.thread.is_alive()
        assert self.exit_code == 0


def minion_settings(master: RunningMaster, tmp_path: Path, host: str) -> Settings:
    return replace(
        master.settings,
        data_dir=tmp_path / host,
        install_dir=tmp_path / host / "install",
        hostname=host,
        port=master.port("publish"),
        results_port=master.port("results"),
        control_port=master.port("control"),
        key_port=master.port("key"),
        auto_accept=False,
    )


def cli(*argv: str) -> tuple[int, Any]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(list(argv))
    text = out.getvalue()
    return code, json.loads(text) if text.startswith(("{", "[")) else text


def test_a_real_minion_is_pending_under_its_host_and_accepted_by_name(
    master: RunningMaster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("DAYBOOK_CONFIG", "DAYBOOK_PORT", "DAYBOOK_MASTER_KEY"):
        monkeypatch.delenv(name, raising=False)
    minion = MinionThread(minion_settings(master, tmp_path, "web-1"))
    try:
        as_master = ("--data-dir", str(master.settings.data_dir))

        def pending_web1() -> dict[str, Any] | None:
            code, document = cli("keys", "list", "--json", *as_master)
            assert code == 0
            return next((k for k in document["pending"] if k["host"] == "web-1"), None)

        pending = wait_for(pending_web1, "web-1 pending under its name")
        assert pending["address"] == "127.0.0.1"
        code, mine = cli("keys", "fingerprint", "--json", "--data-dir", str(tmp_path / "web-1"))
        assert code == 0
        assert mine["minion"]["fingerprint"] == pending["fingerprint"]
        assert mine["master"]["public_key"] == master.public_key  # pinned on first contact
        assert minion.installed("web") == []

        assert cli("keys", "accept", "web-9", *as_master)[0] == 2
        assert cli("keys", "accept", "web-1", *as_master)[0] == 0
        wait_for(lambda: minion.installed("web") == ["1"], "web-1 installs once accepted")
        # Installing can beat the first accepted heartbeat to the master; be sure it is up.
        wait_for(
            lambda: _hosts(master).get("web-1", {}).get("up") is True, "web-1 up at the master"
        )

        code, deleted = cli("keys", "delete", "web-1", "--json", *as_master)
        assert (code, deleted["action"], deleted["host"]) == (0, "delete", "web-1")
        assert _hosts(master)["web-1"]["up"] is False
        wait_for(pending_web1, "web-1 pending again after its next hello")
    finally:
        minion.shutdown()


def test_a_pinned_minion_refuses_a_master_with_another_key(
    settings: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    first = RunningMaster(replace(settings, auto_accept=True))
    minion_conf = minion_settings(first, tmp_path, "web-1")
    minion = MinionThread(minion_conf)
    second: RunningMaster | None = None
    try:
        wait_for(lambda: minion.installed("web") == ["1"], "the first sync")
        pinned = read_public_key(keys_dir(minion_conf.data_dir) / PINNED_MASTER_KEY)
        assert pinned == first.public_key
        first.shutdown()

        # Another master, another key, on the same ports and with the same mappings.
        second = RunningMaster(
            replace(
                settings,
                data_dir=tmp_path / "other-master",
                auto_accept=True,
                port=minion_conf.port,
                results_port=minion_conf.results_port,
                control_port=minion_conf.control_port,
                key_port=minion_conf.key_port,
            )
        )
        assert second.public_key != pinned
        with caplog.at_level(logging.ERROR, logger="minion.enrollment"):
            wait_for(
                lambda: any("now presents the key" in r.getMessage() for r in caplog.records),
                "the minion to notice the new key",
            )
        # It never got through to the second master: no handshake, no heartbeat, no new
        # key. The second master shares the first's key ring (one registry), so it knows
        # the minion's key only as the first master accepted it.
        with second.client() as client:
            assert client.fleet_status().hosts == {}
            listing = client.keys()
        assert len(listing.accepted) == 1
        assert listing.pending == listing.rejected == ()
        assert minion.installed("web") == ["1"]
    finally:
        minion.shutdown()
        if first.thread.is_alive():
            first.shutdown()
        if second is not None:
            second.shutdown()


def test_a_remote_operator_pins_the_master_key_and_waits_for_acceptance(
    trusting_master: RunningMaster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    master = trusting_master
    for name in ("DAYBOOK_CONFIG", "DAYBOOK_MASTER_KEY", "DAYBOOK_PORT"):
        monkeypatch.delenv(name, raising=False)
    remote = (
        "--data-dir",
        str(tmp_path / "laptop"),
        "--hostname",
        "laptop",
        "--master",
        "127.0.0.1",
    )
    monkeypatch.setenv("DAYBOOK_CONTROL_PORT", str(master.port("control")))
    monkeypatch.setenv("DAYBOOK_KEY_PORT", str(master.port("key")))
    code, _ = cli("status", *remote)
    assert code == 1  # refused: the key is new
    pinned = read_public_key(keys_dir(tmp_path / "laptop") / PINNED_MASTER_KEY)
    assert pinned == master.public_key
    with master.client() as client:
        (pending,) = client.keys().pending
        assert (pending.role, pending.host) == ("operator", "laptop")
        client.change_key("keys.accept", pending.fingerprint)
    code, document = cli("status", "--json", *remote)
    assert code == 0
    assert document["hosts"] == {}
    # Key management is not for remote operators, accepted or not.
    assert cli("keys", "list", *remote)[0] == 1
