"""The real master (composition root, loop, sockets, database) on 127.0.0.1, driven by
scripted minions speaking the wire protocol and by the operator client."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import resource
import socket
import sqlite3
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
import zmq
from archives import make_asset
from inprocess_fleet import (
    DEADLINE_S,
    RunningMaster,
    ScriptedMinion,
    live_minions,
    web_fleet_settings,
)
from process_fleet import run_daybook

from daybook import wire
from daybook.config import Settings
from daybook.errors import FleetError
from daybook.model.names import AssetRef
from daybook.net.client import ControlClient, MasterUnreachable, control_endpoint
from daybook.net.endpoints import local_socket_path, read_endpoints
from daybook.registry.base import open_registry
from daybook.store.local import LocalStore
from daybook.views import status_json, sync_json
from daybook_testing.waiting import wait_for
from master.process import (
    FD_HEADROOM,
    FDS_PER_MINION,
    OWN_FDS,
    raise_open_file_limit,
    run_master,
)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return web_fleet_settings(tmp_path)


def test_the_master_writes_its_endpoints_and_removes_them_on_stop(master: RunningMaster) -> None:
    settings = replace(master.settings, master="127.0.0.1")
    assert control_endpoint(settings) == master.endpoints["control"]
    assert (settings.data_dir / "master.json").exists()
    master.shutdown()
    assert not (settings.data_dir / "master.json").exists()
    with pytest.raises(FleetError, match="does not exist"):
        control_endpoint(settings)


def test_sync_wait_returns_as_soon_as_the_last_expected_host_answers(
    context: zmq.Context[zmq.Socket[bytes]], master: RunningMaster
) -> None:
    web1, web2 = live_minions(context, master, "web-1", "web-2")
    outcome: dict[str, object] = {}

    def operator() -> None:
        with master.client() as client:
            started = time.monotonic()
            outcome["summary"] = client.run_sync("web-*", wait=True, timeout_s=30.0)
            outcome["elapsed_s"] = time.monotonic() - started

    thread = threading.Thread(target=operator)
    thread.start()
    event = web1.next_event()
    while event.target != "web-*":
        event = web1.next_event()
    web1.report(event)
    web2.report(web2.event_for(event.sync_id), ok=False)
    thread.join(DEADLINE_S)
    summary = outcome["summary"]
    document = sync_json(summary)  # type: ignore[arg-type]
    assert document["sync_id"] == event.sync_id
    assert document["expected"] == ["web-1", "web-2"]
    assert document["missing"] == []
    assert document["results"]["web-1"]["ok"] is True
    assert document["results"]["web-1"]["services"] == {
        "web": {"installed": [], "present": ["1"], "failed": {}}
    }
    assert document["results"]["web-2"]["ok"] is False
    assert not document["ok"]
    assert outcome["elapsed_s"] < 3.0  # answered on the report, not on a timeout
    for minion in (web1, web2):
        minion.close()


def test_a_sync_times_out_listing_the_missing_hosts(
    context: zmq.Context[zmq.Socket[bytes]], master: RunningMaster
) -> None:
    (web1,) = live_minions(context, master, "web-1")
    with master.client() as client:
        summary = client.run_sync(None, wait=True, timeout_s=0.3)
    assert summary.expected == ("web-1",)
    assert summary.missing == ("web-1",)
    assert not summary.ok
    web1.close()


def test_sync_without_wait_returns_the_expected_hosts_at_once(
    context: zmq.Context[zmq.Socket[bytes]], master: RunningMaster
) -> None:
    (web1,) = live_minions(context, master, "web-1")
    with master.client() as client:
        summary = client.run_sync("db-*", wait=False, timeout_s=5.0)
        assert summary.expected == ()
        summary = client.run_sync(None, wait=False, timeout_s=5.0)
        assert summary.expected == ("web-1",)
        assert summary.results == {}
        web1.report(web1.event_for(summary.sync_id))
        wait_for(lambda: client.sync_result(summary.sync_id).complete, "the report recorded")
    web1.close()


def test_duplicate_reports_are_recorded_once_and_status_shows_the_fleet(
    context: zmq.Context[zmq.Socket[bytes]], master: RunningMaster
) -> None:
    (web1,) = live_minions(context, master, "web-1")
    with master.client() as client:
        summary = client.run_sync(None, wait=False, timeout_s=5.0)
        event = web1.event_for(summary.sync_id)
        web1.report(event, report_id="same")
        web1.report(event, report_id="same")
        wait_for(lambda: client.sync_result(summary.sync_id).complete, "the report")
        status = status_json(client.fleet_status())
    host = status["hosts"]["web-1"]
    assert host["up"] is True
    assert host["last_sync"]["sync_id"] == summary.sync_id
    assert host["last_sync"]["ok"] is True
    assert host["installed"] == {"web": ["1"]}
    web1.close()


def test_malformed_frames_are_dropped_and_the_master_keeps_serving(
    context: zmq.Context[zmq.Socket[bytes]], master: RunningMaster
) -> None:
    hostile_push = context.socket(zmq.PUSH)
    hostile_push.setsockopt(zmq.LINGER, 0)
    hostile_push.connect(master.endpoints["results"])
    hostile_dealer = context.socket(zmq.DEALER)
    hostile_dealer.setsockopt(zmq.LINGER, 0)
    hostile_dealer.connect(master.endpoints["control"])
    garbage = [
        [b"report", b"\xc1"],
        [b"heartbeat"],
        [b"nonsense", b"x"],
        [b"control.request", b"\x80"],  # a request on the minion socket
        [b"report", b"x" * (2 << 20)],  # over the size cap: ZeroMQ drops the peer
    ]
    for frames in garbage:
        _send_if_taken(hostile_push, frames)
        _send_if_taken(hostile_dealer, frames)
    _send_if_taken(hostile_dealer, [b"control.request"] * 3)
    (web1,) = live_minions(context, master, "web-1")
    with master.client() as client:
        summary = client.run_sync(None, wait=False, timeout_s=5.0)
        web1.report(web1.event_for(summary.sync_id))
        wait_for(lambda: client.sync_result(summary.sync_id).complete, "a real report")
    hostile_push.close()
    hostile_dealer.close()
    web1.close()


def _send_if_taken(socket: zmq.Socket[bytes], frames: list[bytes]) -> None:
    # These peers have no key: between the master's refusals of their handshakes they may
    # have no link at all, and a blocking send would then wait forever.
    with contextlib.suppress(zmq.Again):
        socket.send_multipart(frames, zmq.NOBLOCK)


def test_a_minion_that_shows_up_late_catches_up_without_help(
    context: zmq.Context[zmq.Socket[bytes]], settings: Settings
) -> None:
    # Republishes due every second; with nothing to answer, the state goes every 10 s.
    master = RunningMaster(replace(settings, republish_interval_s=1.0))
    try:
        with master.client() as client:
            wait_for(lambda: _has_state(client), "the first desired state")
        late = ScriptedMinion(context, master, "web-9")
        # Every recent sync is answered (none expected anyone): no republish...
        assert not late.sub.poll(3000)
        # ...but the state at once when a heartbeat shows it behind.
        late.heartbeat(state_digest=None)
        first = late.next_event(timeout_s=2.0)
        assert first.target == "*"
        late.close()
    finally:
        master.shutdown()


def test_a_sync_still_missing_live_hosts_is_republished_on_the_interval(
    context: zmq.Context[zmq.Socket[bytes]], master: RunningMaster
) -> None:
    (web1,) = live_minions(context, master, "web-1")
    with master.client() as client:
        started = client.run_sync("web-*", wait=False, timeout_s=5.0)
    sync_id = started.sync_id
    web1.event_for(sync_id)
    # Not answered, and web-1 is up: it goes again, a republish interval later.
    web1.heartbeat()
    web1.event_for(sync_id, timeout_s=4 * master.settings.republish_interval_s + 2.0)
    web1.close()


def test_a_sync_a_live_host_failed_is_republished_for_it_to_try_again(
    context: zmq.Context[zmq.Socket[bytes]], master: RunningMaster
) -> None:
    with master.client() as client:
        # The startup sync, issued before web-1 is known, waits for nobody.
        wait_for(lambda: _has_state(client), "the first desired state")
    (web1,) = live_minions(context, master, "web-1")
    with master.client() as client:
        sync_id = client.run_sync("web-*", wait=False, timeout_s=5.0).sync_id
    event = web1.event_for(sync_id)
    web1.report(event, ok=False)
    # Up, with the current state: no catch-up is due for it.
    web1.heartbeat(epoch=event.epoch, seq=event.seq, state_digest=event.state_digest)
    # Nothing is unanswered, and the quiet republish is 10 intervals off: the state goes
    # again at the next interval because web-1 failed, for it to try again.
    again = web1.next_event(timeout_s=2 * master.settings.republish_interval_s + 1.0)
    assert again.state_digest == event.state_digest
    web1.close()


def _has_state(client: ControlClient) -> bool:
    try:
        client.run_sync("nobody-*", wait=False, timeout_s=1.0)
    except FleetError:
        return False
    return True


def test_a_mapping_change_publishes_an_event_with_no_operator(
    context: zmq.Context[zmq.Socket[bytes]], master: RunningMaster, tmp_path: Path
) -> None:
    (web1,) = live_minions(context, master, "web-1")
    before = web1.next_event().state_digest
    open_registry(f"file://{tmp_path / 'mappings.json'}").update("db-*", lambda _: ("db",))
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        event = web1.next_event()
        if event.state_digest != before:
            assert "db-*" in wire.decode_state(event.encoded_state).mappings
            break
    else:
        raise AssertionError("no event for the mapping change")
    web1.close()


def test_a_restarted_master_keeps_syncs_and_records_late_reports(
    context: zmq.Context[zmq.Socket[bytes]], settings: Settings
) -> None:
    first = RunningMaster(settings)
    (web1,) = live_minions(context, first, "web-1")
    with first.client() as client:
        summary = client.run_sync(None, wait=False, timeout_s=5.0)
    event = web1.event_for(summary.sync_id)
    web1.close()
    first.shutdown()

    # The same ports, as a systemd restart would give.
    fixed = replace(
        settings,
        port=first.port("publish"),
        results_port=first.port("results"),
        control_port=first.port("control"),
    )
    second = RunningMaster(fixed)
    try:
        minion = ScriptedMinion(context, second, "web-1")
        minion.report(event)  # produced while the master was down
        with second.client() as client:
            wait_for(lambda: client.sync_result(summary.sync_id).complete, "the late report")
            result = client.sync_result(summary.sync_id)
            assert result.expected == ("web-1",)
            assert result.results["web-1"].ok
            assert client.fleet_status().epoch > event.epoch
        # The new epoch's first events still carry the stored state and its sync.
        assert minion.next_event().state == event.state
        minion.close()
    finally:
        second.shutdown()


def test_an_unknown_sync_id_is_refused(master: RunningMaster) -> None:
    with master.client() as client, pytest.raises(FleetError, match="unknown sync id"):
        client.sync_result("f" * 32)


def test_an_unreachable_master_is_one_clear_error(
    context: zmq.Context[zmq.Socket[bytes]],
) -> None:
    silent = context.socket(zmq.ROUTER)
    silent.setsockopt(zmq.LINGER, 0)
    silent.bind("tcp://127.0.0.1:*")
    endpoint = silent.getsockopt_string(zmq.LAST_ENDPOINT)
    started = time.monotonic()
    with (
        ControlClient(endpoint, timeout_s=0.3) as client,
        pytest.raises(MasterUnreachable, match=f"cannot reach the master at {endpoint}"),
    ):
        client.fleet_status()
    assert time.monotonic() - started < 2.0
    silent.close()


def test_an_operator_sync_reads_the_registry_and_store_again_first(
    context: zmq.Context[zmq.Socket[bytes]], settings: Settings, tmp_path: Path
) -> None:
    # Pollers so slow that only the refresh can see the changes below in time.
    master = RunningMaster(
        replace(settings, store_poll_interval_s=60.0, registry_poll_interval_s=60.0)
    )
    try:
        (web1,) = live_minions(context, master, "web-1")
        open_registry(f"file://{tmp_path / 'mappings.json'}").update("db-*", lambda _: ("db",))
        path = make_asset(tmp_path, "db", "3")
        LocalStore(tmp_path / "store").upload(
            path, AssetRef("db", "3"), sha256=hashlib.sha256(path.read_bytes()).hexdigest()
        )
        started = time.monotonic()
        with master.client() as client:
            summary = client.run_sync(None, wait=False, timeout_s=5.0)
        assert time.monotonic() - started < 1.5  # the refresh, not its 2 s timeout
        state = wire.decode_state(web1.event_for(summary.sync_id).encoded_state)
        assert state.mappings["db-*"] == ("db",)
        assert "db" in state.digests
        web1.close()
    finally:
        master.shutdown()


def test_a_damaged_master_json_is_one_clear_error(tmp_path: Path) -> None:
    damaged = '{"pid": 1, "epoch": 2, "endpoints": {}, "ports": {"control": 70000}}'
    (tmp_path / "master.json").write_text(damaged)
    with pytest.raises(FleetError, match=r"master\.json: .*'ports\[control\]' is out of range"):
        read_endpoints(tmp_path)
    (tmp_path / "master.json").write_text("{not json")
    with pytest.raises(FleetError, match="cannot read the master's endpoints"):
        read_endpoints(tmp_path)


def test_port_zero_puts_the_ports_peers_derive_in_a_row() -> None:
    # Peers given a master by its publish port alone find the others at +1, +2 and +4.
    from master.process import PORT_OFFSETS, _bind_in_a_row

    context = zmq.Context()
    sockets = [
        ("publish", context.socket(zmq.PUB), 0),
        ("results", context.socket(zmq.PULL), 0),
        ("control", context.socket(zmq.ROUTER), 0),
        ("key", context.socket(zmq.ROUTER), 0),
    ]
    try:
        endpoints = _bind_in_a_row("127.0.0.1", sockets)
    finally:
        for _name, socket, _port in sockets:
            socket.close(linger=0)
        context.term()
    ports = {name: int(endpoint.rsplit(":", 1)[1]) for name, endpoint in endpoints.items()}
    if any(ports[name] != ports["publish"] + offset for name, offset in PORT_OFFSETS.items()):
        # The fallback: only when a busy machine (a 10,000-minion load test) has used up
        # nearly every ephemeral port, as the warning says.
        pytest.skip("no free row of ports on this machine right now")


def test_the_master_raises_its_open_file_limit_to_the_hard_one() -> None:
    """Every minion holds two of the master's descriptors: a soft limit of 1,024 (a common
    default) would cap a fleet at about 460 minions with connections failing past it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard <= 256:
        pytest.skip(f"the hard open-file limit ({hard}) leaves nothing to raise")
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
    try:
        room = raise_open_file_limit()
        raised, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert raised > 256
    assert hard in (resource.RLIM_INFINITY, raised)
    assert room == (int(raised * (1 - FD_HEADROOM)) - OWN_FDS) // FDS_PER_MINION


def _epoch_in(data_dir: Path) -> bytes:
    """The epoch the results database on `data_dir` holds, read without writing."""
    path = data_dir / "master.db"
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        (epoch,) = db.execute("SELECT value FROM meta WHERE key = 'epoch'").fetchone()
    return bytes(epoch)


def _env_of(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment of a `daybook` process on the data dir, store and registry given."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DAYBOOK_")}
    return {
        **env,
        "DAYBOOK_DATA_DIR": str(settings.data_dir),
        "DAYBOOK_STORE": settings.store,
        "DAYBOOK_REGISTRY": settings.registry,
        "DAYBOOK_PORT": "0",
        **extra,
    }


def test_a_second_master_on_the_data_dir_is_refused_and_leaves_the_first_alone(
    master: RunningMaster,
) -> None:
    data_dir = master.settings.data_dir
    epoch = _epoch_in(data_dir)
    second = run_daybook(
        "master", env=_env_of(master.settings, DAYBOOK_HOSTNAME="second"), timeout_s=DEADLINE_S
    )
    assert second.returncode == 1
    assert second.stderr.splitlines() == [
        f"daybook: another master (pid {os.getpid()}) is running with data dir {data_dir}"
    ]
    # Refused before it touched anything of the first's: its epoch, its files, its socket.
    assert _epoch_in(data_dir) == epoch
    assert read_endpoints(data_dir).pid == os.getpid()
    assert local_socket_path(data_dir).is_socket()
    listed = run_daybook("keys", "list", "--json", env=_env_of(master.settings))
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout).keys() >= {"accepted", "pending", "rejected"}


def test_a_master_that_cannot_listen_leaves_a_socket_file_it_did_not_bind(
    settings: Settings,
) -> None:
    run_dir = local_socket_path(settings.data_dir).parent
    run_dir.mkdir(mode=0o700, parents=True)
    with (
        socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as someone_elses,
        socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken,
    ):
        someone_elses.bind(str(local_socket_path(settings.data_dir)))
        someone_elses.listen()
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(FleetError, match=f"cannot listen on tcp://127.0.0.1:{port}"):
            run_master(replace(settings, port=port))
        assert local_socket_path(settings.data_dir).is_socket()
