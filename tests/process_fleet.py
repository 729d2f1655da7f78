"""A real fleet for the end-to-end and fault tests: `daybook master` and `daybook minion`
processes on this machine, their logs, and the conditions the tests wait for.

Every wait is a condition polled against a deadline; ports are ephemeral and read back from
the master's `master.json`; every process is stopped (or killed) on close, whatever state a
test left it in.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from contextlib import closing
from pathlib import Path
from typing import IO, Any, TypeVar

from archives import make_asset
from waiting import wait_for

from daybook.install.installer import STAGING_PREFIX
from daybook.model.fleet import FleetStatus, HostStatus
from daybook.model.names import AssetRef, is_valid_version
from daybook.model.results import Report
from daybook.model.sync import Sync
from daybook.net.client import ControlClient
from daybook.registry.base import Registry
from daybook.store.base import Store

T = TypeVar("T")

# The environment of every process of a test fleet, and what only its master gets: the one
# place for settings every test fleet needs (transport security, for one).
FLEET_ENV: dict[str, str] = {}
MASTER_ENV: dict[str, str] = {"DAYBOOK_AUTO_ACCEPT": "1"}

DEADLINE_S = 30.0
CONFIG = """
bind = "{bind}"
store_poll_interval_s = 0.2
registry_poll_interval_s = 0.2
republish_interval_s = {republish_s}
heartbeat_interval_s = {heartbeat_s}
splay_s = {splay_s}
down_after_s = {down_after_s}
"""
STOP_TIMEOUT_S = 15.0


def asset_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class Proc:
    """One fleet process, its output in a log file."""

    def __init__(
        self, name: str, argv: Sequence[str], env: Mapping[str, str], log_path: Path
    ) -> None:
        self.name = name
        self.log_path = log_path
        self._log: IO[bytes] = log_path.open("wb")
        self.popen = subprocess.Popen(
            list(argv), env=dict(env), stdout=self._log, stderr=subprocess.STDOUT
        )
        self.paused = False

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            self.popen.send_signal(sig)

    def kill(self) -> None:
        """SIGKILL, and reap it: nothing it had in flight is cleaned up."""
        self.signal(signal.SIGKILL)
        self.popen.wait(STOP_TIMEOUT_S)
        self._log.close()
        self.paused = False

    def pause(self) -> None:
        self.signal(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        self.signal(signal.SIGCONT)
        self.paused = False

    def terminate(self) -> None:
        """Ask it to stop: SIGTERM, after SIGCONT if it is paused."""
        if self.paused:
            self.resume()
        self.signal(signal.SIGTERM)

    def wait(self, timeout_s: float = STOP_TIMEOUT_S) -> int | None:
        """Its exit code; it is killed, and None returned, if it does not exit in time."""
        try:
            return self.popen.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()
            return None
        finally:
            self._log.close()

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> int | None:
        self.terminate()
        return self.wait(timeout_s)

    def rss_bytes(self) -> int:
        """Resident memory, from /proc."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError(f"no VmRSS for {self.name} (pid {self.pid})")

    def tail(self, lines: int = 60) -> str:
        return "\n".join(self.log().splitlines()[-lines:])


class ProcessFleet:
    """A master and minions in a temp dir, on the given store and registry.

    `store` and `registry` are the test's own handles on the backends the processes are
    pointed at (by their URLs), for pushing assets and changing mappings.
    """

    def __init__(
        self,
        root: Path,
        *,
        store: Store,
        registry: Registry,
        env: Mapping[str, str] | None = None,
        splay_s: float = 0.1,
        republish_s: float = 1.0,
        down_after_s: float = 2.0,
        heartbeat_s: float = 0.3,
        bind: str = "127.0.0.1",
    ) -> None:
        self.root = root
        self.store = store
        self.registry = registry
        self.master_host = bind
        self._env = dict(env or {})
        self.config = root / "daybook.toml"
        self.config.write_text(
            CONFIG.format(
                bind=bind,
                splay_s=splay_s,
                republish_s=republish_s,
                down_after_s=down_after_s,
                heartbeat_s=heartbeat_s,
            )
        )
        self.master_dir = root / "master"
        self.master: Proc | None = None
        self.ports: dict[str, int] = {}
        self.minions: dict[str, Proc] = {}
        self.processes: list[Proc] = []
        self._install_dirs: dict[str, Path] = {}
        self._client: ControlClient | None = None
        self._assets = root / "assets"
        self._assets.mkdir(exist_ok=True)

    # -- processes -----------------------------------------------------------------------------

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DAYBOOK_")}
        env.update(FLEET_ENV)
        env.update(
            DAYBOOK_CONFIG=str(self.config),
            DAYBOOK_STORE=self.store.url,
            DAYBOOK_REGISTRY=self.registry.url,
        )
        env.update(self._env)
        env.update(extra)
        return env

    def _spawn(
        self,
        name: str,
        command: str,
        env: Mapping[str, str],
        wrap: Sequence[str] = (),
        argv: Sequence[str] = (),
    ) -> Proc:
        argv = [*wrap, *(argv or (sys.executable, "-m", "daybook", "-v", command))]
        runs = sum(1 for p in self.processes if p.name == name)
        log_name = f"{name}.log" if runs == 0 else f"{name}.{runs + 1}.log"
        process = Proc(name, argv, env, self.root / log_name)
        self.processes.append(process)
        return process

    def port_env(self) -> dict[str, str]:
        """Every port the master bound, as the variables that set it."""
        return {
            "DAYBOOK_PORT" if role == "publish" else f"DAYBOOK_{role.upper()}_PORT": str(port)
            for role, port in self.ports.items()
        }

    def start_master(self, *, same_ports: bool = False) -> Proc:
        ports = self.port_env() if same_ports else {"DAYBOOK_PORT": "0"}
        env = self.env(
            DAYBOOK_DATA_DIR=str(self.master_dir),
            DAYBOOK_HOSTNAME="master",
            **MASTER_ENV,
            **ports,
        )
        master = self.master = self._spawn("master", "master", env)
        endpoints = self.master_dir / "master.json"

        def started() -> dict[str, Any] | None:
            assert master.alive(), f"the master died:\n{master.tail()}"
            try:
                document: dict[str, Any] = json.loads(endpoints.read_text())
            except (FileNotFoundError, ValueError):
                return None
            return document if document["pid"] == master.pid else None

        document = wait_for(started, "the master's endpoints")
        self.ports = document["ports"]
        if self._client is not None:
            self._client.close()
        # An operator on the master's host: its local socket, where it has one.
        endpoint = document["endpoints"].get("local") or document["endpoints"]["control"]
        self._client = ControlClient(endpoint, timeout_s=5.0)
        return master

    def start_minion(
        self,
        host: str,
        *,
        wrap: Sequence[str] = (),
        set_hostname: bool = True,
        install_dir: Path | None = None,
        **extra: str,
    ) -> Proc:
        """Start a minion; `wrap` prefixes its command (`ip netns exec NS ...`)."""
        if install_dir is not None:
            self._install_dirs[host] = install_dir
        env = self.env(
            DAYBOOK_DATA_DIR=str(self.root / host),
            DAYBOOK_MASTER=self.master_host,
            DAYBOOK_INSTALL_DIR=str(self.install_dir(host)),
            **self.port_env(),
            **extra,
        )
        if set_hostname:
            env["DAYBOOK_HOSTNAME"] = host
        minion = self.minions[host] = self._spawn(host, "minion", env, wrap)
        return minion

    def start_swarm(self, count: int, prefix: str) -> Proc:
        """`count` minions in one process (minion.swarm), named `PREFIX-NNNN`."""
        env = self.env(
            DAYBOOK_DATA_DIR=str(self.root / "swarm"),
            DAYBOOK_MASTER=self.master_host,
            **self.port_env(),
        )
        argv = [sys.executable, "-m", "minion.swarm", "--count", str(count), "--prefix", prefix]
        return self._spawn("swarm", "swarm", env, argv=argv)

    def close(self) -> list[str]:
        """Stop every process still running (minions first); return what went wrong."""
        running = [p for p in self.processes if p.alive()]
        running.sort(key=lambda p: p is self.master)
        for process in running:
            process.terminate()
        failures = []
        for process in running:
            code = process.wait()
            if code != 0:
                failures.append(f"{process.name} exited {code}:\n{process.tail()}")
        if self._client is not None:
            self._client.close()
            self._client = None
        return failures

    # -- the master's view ---------------------------------------------------------------------

    @property
    def client(self) -> ControlClient:
        assert self._client is not None, "no master started"
        return self._client

    def status(self) -> FleetStatus:
        return self.client.fleet_status()

    def host(self, host: str) -> HostStatus | None:
        return self.status().hosts.get(host)

    def is_up(self, host: str) -> bool:
        entry = self.host(host)
        return entry is not None and entry.up

    def wait_up(self, *hosts: str, timeout_s: float = DEADLINE_S) -> None:
        def up() -> bool:
            for host in hosts:
                process = self.minions[host]
                assert process.alive(), f"{host} died:\n{process.tail()}"
            entries = self.status().hosts
            return all(h in entries and entries[h].up for h in hosts)

        wait_for(up, f"{', '.join(hosts)} shown up", timeout_s)

    def wait_down(self, host: str, timeout_s: float = DEADLINE_S) -> None:
        wait_for(lambda: not self.is_up(host), f"{host} shown down", timeout_s)

    def wait_converged(
        self,
        hosts: Iterable[str],
        wanted: Mapping[str, Sequence[str]],
        timeout_s: float = DEADLINE_S,
    ) -> None:
        """Each host has exactly `wanted` installed, and its latest report, as the master
        holds it, says so and is ok."""
        hosts = list(hosts)

        def converged() -> bool:
            entries = self.status().hosts
            for host in hosts:
                if any(self.installed(host, s) != sorted(v) for s, v in wanted.items()):
                    return False
                entry = entries.get(host)
                if entry is None or not entry.up:
                    return False
                report = entry.last_report
                if report is None or not report.ok:
                    return False
                if any(sorted(report.installed.get(s, ())) != sorted(v) for s, v in wanted.items()):
                    return False
            return True

        try:
            wait_for(converged, f"{', '.join(hosts)} converged on {dict(wanted)}", timeout_s)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.describe(hosts, wanted)}") from None

    def describe(self, hosts: Iterable[str], services: Iterable[str]) -> str:
        """What the disks and the master say about some hosts, for a failure message."""
        entries = self.status().hosts
        lines = []
        for host in hosts:
            disk = {s: self.installed(host, s) for s in services}
            entry = entries.get(host)
            if entry is None:
                lines.append(f"  {host}: on disk {disk}; unknown to the master")
                continue
            report = entry.last_report
            seen = time.time() - entry.last_seen
            lines.append(
                f"  {host}: on disk {disk}; up={entry.up} (seen {seen:.1f} s ago); last report "
                + (
                    "none"
                    if report is None
                    else f"sync {report.sync_id[:8]} ok={report.ok} installed="
                    f"{dict(report.installed)} error={report.error}"
                )
            )
        return "\n".join(lines)

    def has_result(self, sync_id: str, host: str) -> bool:
        return host in self.client.sync_result(sync_id).results

    def last_report(self, host: str) -> Report | None:
        entry = self.host(host)
        return entry.last_report if entry is not None else None

    def sync(self, *, wait_s: float = 0.0, target: str | None = None) -> Sync:
        return self.client.run_sync(target, wait=wait_s > 0, timeout_s=max(wait_s, 1.0))

    def reports_per_sync_and_host(self) -> dict[tuple[str, str], int]:
        """How many reports the master's database holds for each (sync, host)."""
        with closing(self.database()) as db:
            rows = db.execute("SELECT sync_id, host, count(*) FROM reports GROUP BY 1, 2")
            return {(sync_id, host): count for sync_id, host, count in rows}

    def unanswered(self) -> dict[str, list[str]]:
        """Per sync in the master's database, the expected hosts with no report recorded."""
        with closing(self.database()) as db:
            rows = db.execute(
                "SELECT e.sync_id, e.host FROM expected e WHERE NOT EXISTS "
                "(SELECT 1 FROM reports r WHERE r.sync_id = e.sync_id AND r.host = e.host) "
                "ORDER BY 1, 2"
            )
            missing: dict[str, list[str]] = {}
            for sync_id, host in rows:
                missing.setdefault(sync_id, []).append(host)
            return missing

    def database(self) -> sqlite3.Connection:
        """A read-only look at the master's results database (it is in WAL mode, so this
        never blocks the master); the caller closes it."""
        path = self.master_dir / "master.db"
        return sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5.0)

    # -- the minions' disks --------------------------------------------------------------------

    def install_dir(self, host: str) -> Path:
        return self._install_dirs.get(host) or self.root / host / "install"

    def installed(self, host: str, service: str) -> list[str]:
        """The versions visible as installed: what an application would find."""
        service_dir = self.install_dir(host) / service
        try:
            return sorted(p.name for p in service_dir.iterdir() if is_valid_version(p.name))
        except FileNotFoundError:
            return []

    def partials(self, host: str, service: str) -> list[Path]:
        """Staging trees: an install in flight, or a dead process's leftovers."""
        service_dir = self.install_dir(host) / service
        try:
            return [p for p in service_dir.iterdir() if p.name.startswith(STAGING_PREFIX)]
        except FileNotFoundError:
            return []

    def wait_ready(self, *hosts: str, timeout_s: float = DEADLINE_S) -> None:
        """Each host is up and has applied the master's current state (it has reported)."""

        def ready() -> bool:
            for host in hosts:
                minion = self.minions[host]
                assert minion.alive(), f"{host} died:\n{minion.tail()}"
            entries = self.status().hosts
            return all(
                h in entries and entries[h].up and entries[h].last_report is not None for h in hosts
            )

        wait_for(ready, f"minions {', '.join(hosts)} ready", timeout_s)

    # -- the operator's side -------------------------------------------------------------------

    def cli(self, *args: str, timeout_s: float = 60.0) -> subprocess.CompletedProcess[str]:
        """`daybook ARGS` as an operator on the master's host would run it."""
        # DAYBOOK_PORT=0: the CLI finds the master's ports in its master.json.
        env = self.env(DAYBOOK_DATA_DIR=str(self.master_dir), DAYBOOK_PORT="0")
        return subprocess.run(
            [sys.executable, "-m", "daybook", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )

    def push(self, service: str, version: str, files: Mapping[str, bytes] | None = None) -> Path:
        path = make_asset(self._assets, service, version, dict(files) if files else None)
        self.store.upload(path, AssetRef(service, version), sha256=asset_sha256(path))
        return path

    def map(self, pattern: str, *services: str) -> None:
        self.registry.update(pattern, lambda _: services)
