"""End to end: real `daybook master` and `daybook minion` processes on 127.0.0.1, with the
embedded file store and file registry. Ports are ephemeral and read back from the master's
`master.json`; every wait is on a condition with a deadline."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import pytest
from archives import make_asset

from daybook.control import ControlClient
from daybook.local_store import LocalStore
from daybook.naming import AssetRef
from daybook.registry import open_registry
from daybook.wire import FleetStatus

pytestmark = pytest.mark.e2e

DEADLINE_S = 20.0
CONFIG = """
bind = "127.0.0.1"
store_poll_interval_s = 0.2
registry_poll_interval_s = 0.2
republish_interval_s = 1.0
heartbeat_interval_s = 0.3
splay_s = {splay_s}
down_after_s = 2.0
"""


def wait_for(condition: Callable[[], Any], what: str, timeout_s: float = DEADLINE_S) -> Any:
    deadline = time.monotonic() + timeout_s
    pause = threading.Event()
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        pause.wait(0.05)


class Process:
    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_path: Path) -> None:
        self.name = name
        self.log_path = log_path
        self._log: IO[bytes] = log_path.open("wb")
        self.popen = subprocess.Popen(argv, env=env, stdout=self._log, stderr=subprocess.STDOUT)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 10.0) -> int:
        self.signal(sig)
        return self.wait(timeout_s)

    def signal(self, sig: int = signal.SIGTERM) -> None:
        if self.alive():
            self.popen.send_signal(sig)

    def wait(self, timeout_s: float = 10.0) -> int:
        try:
            code = self.popen.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            code = self.popen.wait()
            raise AssertionError(f"{self.name} did not stop:\n{self.log()}") from None
        finally:
            self._log.close()
        return code


class Fleet:
    """A local fleet in a temp dir: one store, one mappings file, a master, minions."""

    def __init__(self, root: Path, splay_s: float = 0.1) -> None:
        self.root = root
        self.store_dir = root / "store"
        self.store = LocalStore(self.store_dir)
        self.registry_url = f"file://{root / 'mappings.json'}"
        self.config = root / "daybook.toml"
        self.config.write_text(CONFIG.format(splay_s=splay_s))
        self.master_dir = root / "master"
        self.master: Process | None = None
        self.ports: dict[str, int] = {}
        self.minions: dict[str, Process] = {}
        self._processes: list[Process] = []
        self._client: ControlClient | None = None

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DAYBOOK_")}
        env.update(
            DAYBOOK_CONFIG=str(self.config),
            DAYBOOK_STORE=self.store.url,
            DAYBOOK_REGISTRY=self.registry_url,
        )
        env.update(extra)
        return env

    def _spawn(self, name: str, command: str, env: dict[str, str]) -> Process:
        argv = [sys.executable, "-m", "daybook", "-v", command]
        runs = sum(1 for p in self._processes if p.name == name)
        log_name = f"{name}.log" if runs == 0 else f"{name}.{runs + 1}.log"
        process = Process(name, argv, env, self.root / log_name)
        self._processes.append(process)
        return process

    # -- master --------------------------------------------------------------------------------

    def start_master(self, *, same_ports: bool = False) -> Process:
        ports = (
            {
                "DAYBOOK_PORT": str(self.ports["publish"]),
                "DAYBOOK_RESULTS_PORT": str(self.ports["results"]),
                "DAYBOOK_CONTROL_PORT": str(self.ports["control"]),
                "DAYBOOK_KEY_PORT": str(self.ports["key"]),
                "DAYBOOK_HTTP_PORT": str(self.ports["http"]),
            }
            if same_ports
            else {"DAYBOOK_PORT": "0"}
        )
        # These tests are not about keys: every minion is let in (tests/test_security.py
        # covers key acceptance).
        env = self.env(
            DAYBOOK_DATA_DIR=str(self.master_dir),
            DAYBOOK_HOSTNAME="master",
            DAYBOOK_AUTO_ACCEPT="1",
            **ports,
        )
        master = self.master = self._spawn("master", "master", env)
        endpoints = self.master_dir / "master.json"

        def started() -> dict[str, Any] | None:
            assert master.alive(), f"the master died:\n{master.log()}"
            try:
                document: dict[str, Any] = json.loads(endpoints.read_text())
            except (FileNotFoundError, ValueError):
                return None
            return document if document["pid"] == master.popen.pid else None

        document = wait_for(started, "the master's endpoints")
        self.ports = document["ports"]
        if self._client is not None:
            self._client.close()
        # An operator on the master's host, through its local socket.
        self._client = ControlClient(document["endpoints"]["local"], timeout_s=5.0)
        return master

    @property
    def client(self) -> ControlClient:
        assert self._client is not None
        return self._client

    def status(self) -> FleetStatus:
        return self.client.fleet_status()

    # -- minions -------------------------------------------------------------------------------

    def start_minion(self, host: str, **extra: str) -> Process:
        env = self.env(
            DAYBOOK_DATA_DIR=str(self.root / host),
            DAYBOOK_HOSTNAME=host,
            DAYBOOK_PORT=str(self.ports["publish"]),
            DAYBOOK_RESULTS_PORT=str(self.ports["results"]),
            DAYBOOK_CONTROL_PORT=str(self.ports["control"]),
            DAYBOOK_KEY_PORT=str(self.ports["key"]),
            **extra,
        )
        minion = self.minions[host] = self._spawn(host, "minion", env)
        return minion

    def install_dir(self, host: str) -> Path:
        return self.root / host / "install"

    def installed(self, host: str, service: str) -> list[str]:
        try:
            return sorted(p.name for p in (self.install_dir(host) / service).iterdir())
        except FileNotFoundError:
            return []

    def wait_ready(self, *hosts: str) -> None:
        """Each host is up and has applied the master's current state (it has reported)."""

        def ready() -> bool:
            for host in hosts:
                assert self.minions[host].alive(), f"{host} died:\n{self.minions[host].log()}"
            entries = self.status().hosts
            return all(
                h in entries and entries[h].up and entries[h].last_report is not None for h in hosts
            )

        wait_for(ready, f"minions {', '.join(hosts)} ready")

    # -- operator ------------------------------------------------------------------------------

    def cli(self, *args: str, timeout_s: float = 60.0) -> subprocess.CompletedProcess[str]:
        # DAYBOOK_PORT=0: the CLI finds the control port in the master's master.json.
        env = self.env(DAYBOOK_DATA_DIR=str(self.master_dir), DAYBOOK_PORT="0")
        return subprocess.run(
            [sys.executable, "-m", "daybook", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )

    def push(self, service: str, version: str) -> None:
        path = make_asset(self.root, service, version)
        sha256 = hashlib.sha256(path.read_bytes()).hexdigest()
        self.store.upload(path, AssetRef(service, version), sha256=sha256)

    def map(self, pattern: str, *services: str) -> None:
        open_registry(self.registry_url).update(pattern, lambda _: services)

    def close(self) -> None:
        # Minions first, all at once: a minion outliving its master waits a moment on
        # shutdown to hand over what it still has queued for it.
        running = [p for p in self._processes if p.alive()]
        running.sort(key=lambda p: p is self.master)
        for process in running:
            process.signal()
        failures = []
        for process in running:
            code = process.wait()
            if code != 0:
                failures.append(f"{process.name} exited {code}:\n{process.log()}")
        if self._client is not None:
            self._client.close()
        assert not failures, "\n".join(failures)


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    running = Fleet(tmp_path)
    try:
        yield running
    finally:
        running.close()


def sync_json(fleet: Fleet, *args: str) -> tuple[int, dict[str, Any]]:
    result = fleet.cli("sync", "--json", *args)
    assert result.stdout, result.stderr
    document: dict[str, Any] = json.loads(result.stdout)
    return result.returncode, document


def test_operator_sync_gets_every_result_back(fleet: Fleet) -> None:
    fleet.push("web", "1.0")
    fleet.push("web", "1.1")
    fleet.push("db", "7")
    fleet.map("web-*", "web")
    fleet.map("db-*", "db")
    fleet.start_master()
    for host in ("web-1", "web-2", "db-1"):
        fleet.start_minion(host)
    fleet.wait_ready("web-1", "web-2", "db-1")

    code, document = sync_json(fleet, "--wait", "--timeout", "20")
    assert code == 0, document
    assert document["expected"] == ["db-1", "web-1", "web-2"]
    assert document["missing"] == []
    assert set(document["results"]) == {"db-1", "web-1", "web-2"}
    for host in ("web-1", "web-2"):
        assert document["results"][host]["ok"] is True
        assert document["results"][host]["services"] == {
            "web": {"installed": [], "present": ["1.0", "1.1"], "failed": {}}
        }
        assert fleet.installed(host, "web") == ["1.0", "1.1"]
        assert (fleet.install_dir(host) / "web" / "1.1" / "bin" / "run").is_file()
    assert document["results"]["db-1"]["services"]["db"]["present"] == ["7"]
    assert fleet.installed("db-1", "web") == []

    targeted = fleet.cli("sync", "--wait", "--target", "db-*")
    assert targeted.returncode == 0, targeted.stderr
    assert "db-1" in targeted.stdout
    assert "web-1" not in targeted.stdout

    status = fleet.cli("status", "--json")
    assert status.returncode == 0, status.stderr
    hosts = json.loads(status.stdout)["hosts"]
    assert set(hosts) == {"db-1", "web-1", "web-2"}
    assert all(entry["up"] for entry in hosts.values())
    assert hosts["web-2"]["installed"] == {"web": ["1.0", "1.1"]}
    assert hosts["db-1"]["last_sync"]["ok"] is True
    human = fleet.cli("status")
    assert "web-2" in human.stdout
    assert "up" in human.stdout


def test_new_assets_and_mapping_changes_reach_minions_with_no_operator(fleet: Fleet) -> None:
    fleet.push("web", "1")
    fleet.map("web-*", "web")
    fleet.start_master()
    fleet.start_minion("web-1")
    wait_for(lambda: fleet.installed("web-1", "web") == ["1"], "the first version")

    fleet.push("web", "2")
    wait_for(lambda: fleet.installed("web-1", "web") == ["1", "2"], "a pushed version")

    fleet.push("api", "5")
    fleet.map("web-*", "web", "api")
    wait_for(lambda: fleet.installed("web-1", "api") == ["5"], "a newly mapped service")

    fleet.map("web-1", "solo")  # a more specific pattern wins
    fleet.push("solo", "1")
    wait_for(lambda: fleet.installed("web-1", "solo") == ["1"], "the more specific pattern")
    report = wait_for(
        lambda: (r := fleet.status().hosts["web-1"].last_report) and r.pattern == "web-1" and r,
        "a report for the new pattern",
    )
    assert list(report.services) == ["solo"]


def test_a_minion_started_after_the_event_catches_up(fleet: Fleet) -> None:
    fleet.push("web", "1")
    fleet.map("web-*", "web")
    fleet.start_master()
    fleet.start_minion("web-1")
    wait_for(lambda: fleet.installed("web-1", "web") == ["1"], "the first minion")
    fleet.push("web", "2")
    wait_for(lambda: fleet.installed("web-1", "web") == ["1", "2"], "the change")

    fleet.start_minion("web-late")
    wait_for(lambda: fleet.installed("web-late", "web") == ["1", "2"], "the late minion")
    fleet.wait_ready("web-late")


def test_a_killed_minion_is_reported_missing_then_down(fleet: Fleet) -> None:
    fleet.push("web", "1")
    fleet.map("web-*", "web")
    fleet.start_master()
    fleet.start_minion("web-1")
    fleet.start_minion("web-2")
    fleet.wait_ready("web-1", "web-2")

    fleet.minions["web-2"].stop(signal.SIGKILL)
    code, document = sync_json(fleet, "--wait", "--timeout", "1.5")
    assert code == 1
    assert document["missing"] == ["web-2"]
    assert document["results"]["web-1"]["ok"] is True

    wait_for(lambda: not fleet.status().hosts["web-2"].up, "web-2 shown down")
    code, document = sync_json(fleet, "--wait", "--timeout", "10")
    assert code == 0
    assert document["expected"] == ["web-1"]


def test_a_master_killed_and_restarted_mid_sync_loses_no_result(tmp_path: Path) -> None:
    fleet = Fleet(tmp_path, splay_s=0.5)  # minions still busy when the master dies
    try:
        fleet.push("web", "1")
        fleet.map("web-*", "web")
        fleet.start_master()
        hosts = ("web-1", "web-2", "web-3")
        for host in hosts:
            fleet.start_minion(host)
        fleet.wait_ready(*hosts)

        fleet.push("web", "2")
        code, started = sync_json(fleet)
        assert code == 0
        assert started["expected"] == list(hosts)
        assert fleet.master is not None
        fleet.master.stop(signal.SIGKILL)

        fleet.start_master(same_ports=True)
        summary = wait_for(
            lambda: (s := fleet.client.sync_result(started["sync_id"])).complete and s,
            "every result of the interrupted sync",
        )
        assert summary.expected == hosts
        assert all(report.ok for report in summary.results.values())
        for host in hosts:
            wait_for(lambda h=host: fleet.installed(h, "web") == ["1", "2"], f"{host} synced")
        code, document = sync_json(fleet, "--wait", "--timeout", "20")
        assert code == 0, document
        assert all(
            result["services"]["web"]["present"] == ["1", "2"]
            for result in document["results"].values()
        ), json.dumps(document["results"], indent=1)
    finally:
        fleet.close()


def test_two_minions_with_the_same_services_pull_in_parallel(fleet: Fleet) -> None:
    versions = [f"1.{i}" for i in range(6)]
    for version in versions:
        fleet.push("web", version)
    fleet.push("api", "1")
    fleet.start_master()
    fleet.start_minion("web-1")
    fleet.start_minion("web-2")
    fleet.wait_ready("web-1", "web-2")  # nothing mapped yet: an empty first sync

    fleet.map("web-*", "web", "api")
    code, document = sync_json(fleet, "--wait", "--timeout", "20")
    assert code == 0, document
    for host in ("web-1", "web-2"):
        assert fleet.installed(host, "web") == sorted(versions)
        assert fleet.installed(host, "api") == ["1"]
        leftovers = [p for p in (fleet.install_dir(host) / "web").iterdir() if p.name[0] == "."]
        assert leftovers == []
        result = document["results"][host]["services"]["web"]
        assert sorted(result["installed"] + result["present"]) == sorted(versions)


def test_sync_against_a_stopped_master_is_one_clear_error(fleet: Fleet) -> None:
    fleet.start_master()
    assert fleet.master is not None
    assert fleet.master.stop() == 0
    result = fleet.cli("sync", "--wait")
    assert result.returncode == 1
    assert result.stderr.startswith("daybook: ")
    assert "master.json" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
