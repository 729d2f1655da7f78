"""The end-to-end and fault tests' fleet: the harness's real `daybook master` and
`daybook minion` processes (daybook_testing.fleet), on a store and registry the test holds
handles on, with what the tests look at: installed trees, the master's database, the CLI.

Every wait is a condition polled against a deadline; ports are ephemeral and read back from
the master's `master.json`; every process is stopped (or killed) on close, whatever state a
test left it in.
"""

from __future__ import annotations

import hashlib
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from contextlib import closing
from pathlib import Path

from archives import make_asset

from daybook.errors import DaybookError
from daybook.install.installer import STAGING_PREFIX
from daybook.model.names import AssetRef, is_valid_version
from daybook.model.results import Report
from daybook.model.sync import Sync
from daybook.net.endpoints import MasterEndpoints, read_endpoints
from daybook.registry.base import Registry
from daybook.store.base import Store
from daybook_testing.fleet import Fleet
from daybook_testing.processes import Proc
from daybook_testing.waiting import DEADLINE_S

__all__ = ["Proc", "ProcessFleet", "asset_sha256"]

# The environment of every process of a test fleet: the one place for settings every test
# fleet needs (transport security, for one).
FLEET_ENV: dict[str, str] = {}

CONFIG = """
bind = "{bind}"
store_poll_interval_s = {store_poll_s}
registry_poll_interval_s = 0.2
republish_interval_s = {republish_s}
heartbeat_interval_s = {heartbeat_s}
splay_s = {splay_s}
down_after_s = {down_after_s}
"""


def asset_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class ProcessFleet(Fleet):
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
        store_poll_s: float = 0.2,
    ) -> None:
        config = CONFIG.format(
            bind=bind,
            store_poll_s=store_poll_s,
            splay_s=splay_s,
            republish_s=republish_s,
            down_after_s=down_after_s,
            heartbeat_s=heartbeat_s,
        )
        super().__init__(
            root,
            command=[sys.executable, "-m", "daybook", "-v"],
            config=config,
            store_url=store.url,
            registry_url=registry.url,
            master_host=bind,
        )
        self.store = store
        self.registry = registry
        self._env = dict(env or {})
        self._install_dirs: dict[str, Path] = {}
        self._assets = root / "assets"
        self._assets.mkdir(exist_ok=True)

    def env(self, **extra: str) -> dict[str, str]:
        return super().env(**{**FLEET_ENV, **self._env, **extra})

    def start_minion(
        self,
        host: str,
        *,
        wrap: Sequence[str] = (),
        set_hostname: bool = True,
        install_dir: Path | None = None,
        without: Sequence[str] = (),
        **extra: str,
    ) -> Proc:
        """Start a minion; `wrap` prefixes its command (`ip netns exec NS ...`)."""
        if install_dir is not None:
            self._install_dirs[host] = install_dir
        return super().start_minion(
            host,
            wrap=wrap,
            set_hostname=set_hostname,
            without=without,
            DAYBOOK_INSTALL_DIR=str(self.install_dir(host)),
            **extra,
        )

    # -- the master's view ---------------------------------------------------------------------

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
            self.wait_for(converged, f"{', '.join(hosts)} converged on {dict(wanted)}", timeout_s)
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

    # -- the operator's side -------------------------------------------------------------------

    def cli(self, *args: str, timeout_s: float = 60.0) -> subprocess.CompletedProcess[str]:
        """`daybook ARGS` as an operator on the master's host would run it."""
        # DAYBOOK_PORT=0: the CLI finds the master's ports in its master.json.
        env = self.env(DAYBOOK_DATA_DIR=str(self.master_dir), DAYBOOK_PORT="0")
        return run_daybook(*args, env=env, timeout_s=timeout_s)

    def push(self, service: str, version: str, files: Mapping[str, bytes] | None = None) -> Path:
        path = make_asset(self._assets, service, version, dict(files) if files else None)
        self.store.upload(path, AssetRef(service, version), sha256=asset_sha256(path))
        return path

    def map(self, pattern: str, *services: str) -> None:
        self.registry.update(pattern, lambda _: services)


def endpoints_once_written(data_dir: Path) -> MasterEndpoints | None:
    """The endpoints a master on `data_dir` wrote, or None while it has not yet."""
    try:
        return read_endpoints(data_dir)
    except DaybookError:
        return None


def run_daybook(
    *args: str, env: Mapping[str, str], timeout_s: float = 60.0
) -> subprocess.CompletedProcess[str]:
    """`daybook ARGS` in a process of its own, its output captured, whatever its exit."""
    return subprocess.run(
        [sys.executable, "-m", "daybook", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
