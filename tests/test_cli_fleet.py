"""The fleet commands as users and scripts see them: `sync` and `status`, their JSON, their
human tables, their exit codes and their one-line errors."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from socket import AF_UNIX, SOCK_STREAM
from socket import socket as stream_socket

import pytest
import zmq
from archives import make_asset
from cli_runner import Run, cli_runner
from inprocess_fleet import RunningMaster, fleet_settings, live_minions

from daybook.errors import InputError
from daybook.model.names import AssetRef
from daybook.model.patterns import HostPattern
from daybook.net.client import someone_listens
from daybook.net.endpoints import local_socket_path
from daybook.registry.base import open_registry
from daybook.store.local import LocalStore


@pytest.fixture
def run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Run:
    unset = ("DAYBOOK_CONFIG", "DAYBOOK_PORT", "DAYBOOK_CONTROL_PORT", "DAYBOOK_MASTER")
    # DAYBOOK_PORT 0: the control port comes from master.json.
    env = {"DAYBOOK_DATA_DIR": str(tmp_path / "master"), "DAYBOOK_PORT": "0"}
    return cli_runner(monkeypatch, capsys, unset=unset, env=env)


def test_a_bad_target_is_bad_input(run: Run) -> None:
    result = run("sync", "--target", "web-[1-3]")
    assert result.code == 2
    assert result.err.startswith("daybook: invalid host pattern")
    assert len(result.err.splitlines()) == 1


@pytest.mark.parametrize("timeout", ["0", "-1", "nan"])
def test_a_bad_timeout_is_bad_input(run: Run, timeout: str) -> None:
    result = run("sync", "--wait", "--timeout", timeout)
    assert result.code == 2
    assert "--timeout" in result.err


@pytest.mark.parametrize(
    "argv",
    [
        ("sync", "--timeout", "90000"),
        ("sync", "--wait", "--timeout", "100000"),
        ("sync", "--batch", "2", "--timeout", "90000"),
    ],
)
def test_a_timeout_over_a_day_is_bad_input_not_an_unreachable_master(
    run: Run, argv: tuple[str, ...]
) -> None:
    # Refused before any master is asked (the fixture's control port is 0: none would be).
    result = run(*argv)
    assert result.code == 2
    assert result.err == f"daybook: --timeout must be at most 86400 s (a day), not {argv[-1]}\n"


@pytest.mark.parametrize("command", ["sync", "status"])
def test_no_running_master_is_one_clear_line(run: Run, command: str) -> None:
    result = run(command)
    assert result.code == 1
    assert result.err.startswith("daybook: the control port is 0")
    assert "master.json" in result.err
    assert len(result.err.splitlines()) == 1


def _leave_a_stale_local_socket(data_dir: Path) -> Path:
    """What a master killed with SIGKILL leaves: its socket file, with nobody listening."""
    path = local_socket_path(data_dir)
    path.parent.mkdir(mode=0o700, parents=True)
    with stream_socket(AF_UNIX, SOCK_STREAM) as dead:
        dead.bind(str(path))
        dead.listen()
    return path


def test_a_unix_socket_nobody_listens_on_is_told_from_a_live_one(tmp_path: Path) -> None:
    with stream_socket(AF_UNIX, SOCK_STREAM) as live:
        live.bind(str(tmp_path / "live.sock"))
        live.listen()
        assert someone_listens(tmp_path / "live.sock")
    assert not someone_listens(tmp_path / "live.sock")  # closed, its file left behind


@pytest.mark.parametrize(
    "command",
    [("status",), ("keys", "list"), ("sync", "--abort", "X"), ("sync", "--wait", "--timeout", "2")],
)
def test_a_stale_local_socket_says_at_once_that_the_master_is_not_running(
    run: Run, tmp_path: Path, command: tuple[str, ...]
) -> None:
    path = _leave_a_stale_local_socket(tmp_path / "master")
    started = time.monotonic()
    result = run(*command)
    assert time.monotonic() - started < 2.0  # no wait for an answer that cannot come
    assert result.code == 1
    assert result.err.splitlines() == [
        f"daybook: the master is not running: nobody listens on its local socket {path} "
        "(it was left by a master that did not stop cleanly)"
    ]


class Responder:
    """Scripted minions answering every event on their own thread until stopped."""

    def __init__(self, master: RunningMaster, hosts: tuple[str, ...]) -> None:
        self._master = master
        self._hosts = hosts
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        assert self._ready.wait(10.0)

    def _run(self) -> None:
        context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        minions = live_minions(context, self._master, *self._hosts)
        self._ready.set()
        poller = zmq.Poller()
        for minion in minions:
            poller.register(minion.sub, zmq.POLLIN)
        by_socket = {minion.sub: minion for minion in minions}
        answered: set[tuple[str, str]] = set()
        while not self._stop.is_set():
            for socket, _ in poller.poll(50):
                minion = by_socket[socket]
                event = minion.next_event()
                # As a real minion: only events targeting it, one report per sync.
                if HostPattern(event.target).matches(minion.host) and (
                    (minion.host, event.sync_id) not in answered
                ):
                    answered.add((minion.host, event.sync_id))
                    minion.report(event, ok=minion.host != "web-bad")
        for minion in minions:
            minion.close()
        context.term()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10.0)


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[RunningMaster]:
    path = make_asset(tmp_path, "web", "1")
    LocalStore(tmp_path / "store").upload(
        path, AssetRef("web", "1"), sha256=hashlib.sha256(path.read_bytes()).hexdigest()
    )
    open_registry(f"file://{tmp_path / 'mappings.json'}").update("web-*", lambda _: ("web",))
    master = RunningMaster(fleet_settings(tmp_path))
    yield master
    master.shutdown()


def test_sync_wait_json_status_and_tables(run: Run, fleet: RunningMaster) -> None:
    responder = Responder(fleet, ("web-1", "web-2"))
    try:
        result = run("sync", "--wait", "--json")
        assert result.code == 0, result.err
        document = result.json()
        assert set(document) >= {"sync_id", "expected", "results", "missing"}
        assert document["expected"] == ["web-1", "web-2"]
        assert document["missing"] == []
        assert document["results"]["web-1"] == {
            **document["results"]["web-1"],
            "ok": True,
            "services": {"web": {"installed": [], "present": ["1"], "failed": {}}},
        }

        table = run("sync", "--wait", "--target", "web-2")
        assert table.code == 0
        assert "web-2" in table.out
        assert "web-1" not in table.out
        assert "present 1" in table.out

        started = run("sync")
        assert started.code == 0
        assert "started; expecting 2 host(s)" in started.out

        nobody = run("sync", "--wait", "--target", "db-*", "--json")
        assert nobody.code == 0
        assert nobody.json()["expected"] == []

        status = run("status", "--json")
        assert status.code == 0
        hosts = status.json()["hosts"]
        assert set(hosts) == {"web-1", "web-2"}
        assert hosts["web-1"]["up"] is True
        assert hosts["web-1"]["last_sync"]["ok"] is True
        assert hosts["web-1"]["installed"] == {"web": ["1"]}
        assert isinstance(hosts["web-1"]["last_seen"], str)

        human = run("status")
        assert human.out.splitlines()[0].split() == [
            "HOST",
            "STATE",
            "SEEN",
            "LAST",
            "SYNC",
            "INSTALLED",
        ]
        assert "web-2" in human.out
    finally:
        responder.close()


def test_a_failed_or_missing_minion_makes_sync_exit_1(run: Run, fleet: RunningMaster) -> None:
    responder = Responder(fleet, ("web-bad",))
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    (silent,) = live_minions(context, fleet, "web-silent")
    try:
        result = run("sync", "--wait", "--timeout", "0.5", "--json")
        assert result.code == 1
        document = result.json()
        assert document["missing"] == ["web-silent"]
        assert document["results"]["web-bad"]["ok"] is False
        table = run("sync", "--wait", "--timeout", "0.5")
        assert table.code == 1
        assert "MISSING" in table.out
        assert "FAILED 1: broken" in table.out
    finally:
        silent.close()
        context.term()
        responder.close()


def test_a_request_the_master_cannot_decode_is_refused_as_bad_input(fleet: RunningMaster) -> None:
    # What a client without the CLI's bound, or of another version, may send: the master
    # says why at once, rather than leaving it to time out as if the master were gone.
    with fleet.client() as client, pytest.raises(InputError) as refused:
        client.start_sync(None, deadline_s=90_000.0)
    assert str(refused.value) == (
        "the master refused the request: control request: "
        "field 'deadline_s' is out of range (90000.0)"
    )


def test_a_minion_without_the_masters_ports_is_a_config_error(run: Run) -> None:
    result = run("minion")  # DAYBOOK_PORT=0 from the fixture
    assert result.code == 2
    assert "needs the master's real ports" in result.err
