"""Several masters end to end, on the embedded registry (the file lease beside the mappings
file): one leads, the other stands by warm; a leader killed or stopped hands over, a key
accepted on one master works through the other, and minions act only on the newest term.
Real `daybook master` and `daybook minion` processes; the operator runs the real CLI."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from process_fleet import Proc, ProcessFleet, run_daybook

from daybook.errors import FleetError
from daybook.net.endpoints import MasterEndpoints, read_endpoints
from daybook.registry.consul import ConsulRegistry
from daybook.registry.file import FileRegistry
from daybook.store.local import LocalStore
from daybook_testing.consul_server import ConsulServer
from daybook_testing.fleet import MASTER_ENV

pytestmark = pytest.mark.e2e

HOSTS = ("web-1", "web-2", "web-3")


@dataclass
class Master:
    name: str
    data_dir: Path
    proc: Proc
    endpoints: MasterEndpoints

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.endpoints.ports['publish']}"


class Masters:
    """Two or more masters of one fleet: one data dir and one log each, one key pair."""

    def __init__(self, fleet: ProcessFleet) -> None:
        self.fleet = fleet
        self.by_name: dict[str, Master] = {}
        self.key_file = fleet.root / "fleet-master.key_secret"

    def start(self, name: str) -> Master:
        data_dir = self.fleet.root / name
        env = self.fleet.env(
            DAYBOOK_DATA_DIR=str(data_dir),
            DAYBOOK_HOSTNAME=name,
            # The lock names the leader as minions and operators reach it.
            DAYBOOK_ADVERTISE="127.0.0.1",
            DAYBOOK_PORT="0",
            DAYBOOK_HTTP_PORT="0",
            **MASTER_ENV,
        )
        if self.key_file.exists():
            env["DAYBOOK_MASTER_KEY_FILE"] = str(self.key_file)
        proc = self.fleet.spawn(name, [*self.fleet.command, "master"], env)

        def started() -> MasterEndpoints | None:
            self.fleet.check_alive(proc)
            try:
                written = read_endpoints(data_dir)
            except FleetError:
                return None
            return written if written.pid == proc.pid else None

        endpoints = self.fleet.wait_for(started, f"{name}'s endpoints")
        if not self.key_file.exists():
            # Every master of the fleet presents the first one's key pair.
            secret = data_dir / "keys" / "master.key_secret"
            self.key_file.write_bytes(secret.read_bytes())
            self.key_file.chmod(0o600)
        master = self.by_name[name] = Master(name, data_dir, proc, endpoints)
        return master

    @property
    def listed(self) -> str:
        return ",".join(m.address for m in self.by_name.values())

    def operator(self, *args: str, timeout_s: float = 60.0) -> subprocess.CompletedProcess[str]:
        """`daybook ARGS` from an operator's own machine, given every master."""
        env = self.fleet.env(
            DAYBOOK_DATA_DIR=str(self.fleet.root / "operator"),
            DAYBOOK_HOSTNAME="laptop",
            DAYBOOK_MASTER=self.listed,
        )
        return run_daybook(*args, env=env, timeout_s=timeout_s)

    def local(self, name: str, *args: str) -> subprocess.CompletedProcess[str]:
        """`daybook ARGS` on a master's own host, through its local socket."""
        env = self.fleet.env(DAYBOOK_DATA_DIR=str(self.by_name[name].data_dir), DAYBOOK_PORT="0")
        return run_daybook(*args, env=env, timeout_s=60)


def status(masters: Masters) -> dict[str, Any]:
    result = masters.operator("status", "--json")
    assert result.returncode == 0, result.stderr
    document: dict[str, Any] = json.loads(result.stdout)
    return document


def roles(masters: Masters) -> dict[str, str]:
    return {row["address"]: row["role"] for row in status(masters)["masters"]}


@pytest.fixture(params=["lease"])
def two_masters(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[ProcessFleet, Masters]]:
    """Two masters and three minions; on the embedded lease, or (`consul`) on the Consul
    double's session lock."""
    if request.param == "consul":
        consul: ConsulServer = request.getfixturevalue("consul_server")
        registry: ConsulRegistry | FileRegistry = ConsulRegistry(consul.address)
    else:
        registry = FileRegistry(tmp_path / "m.json")
    fleet = ProcessFleet(tmp_path, store=LocalStore(tmp_path / "store"), registry=registry)
    masters = Masters(fleet)
    try:
        fleet.push("web", "1")
        fleet.map("web-*", "web")
        masters.start("m1")
        m1 = masters.by_name["m1"]
        fleet.wait_for(lambda: "leading the fleet as" in m1.proc.log(), "m1 leading")
        masters.start("m2")
        for host in HOSTS:
            fleet.start_minion(host, DAYBOOK_MASTER=masters.listed)
        # The operator's key is pending on first contact; accepted on m1, it holds on m2.
        first = masters.operator("status")
        assert first.returncode != 0
        assert "pending" in first.stderr, first.stderr
        accepted = masters.local("m1", "keys", "accept", "laptop")
        assert accepted.returncode == 0, accepted.stderr
        yield fleet, masters
    finally:
        failures = fleet.close()
        assert not failures, "\n".join(failures)


def sync_wait(masters: Masters, timeout: str = "20") -> tuple[int, dict[str, Any]]:
    result = masters.operator("sync", "--wait", "--json", "--timeout", timeout)
    assert result.stdout, result.stderr
    document: dict[str, Any] = json.loads(result.stdout)
    return result.returncode, document


def test_one_leads_the_other_stands_by_and_takes_over_when_killed(
    two_masters: tuple[ProcessFleet, Masters],
) -> None:
    fleet, masters = two_masters
    m1, m2 = masters.by_name["m1"], masters.by_name["m2"]
    fleet.wait_for(
        lambda: roles(masters) == {m1.address: "leader", m2.address: "standby"},
        "m1 leading and m2 standing by",
    )
    code, document = sync_wait(masters)
    assert code == 0, document
    assert set(document["results"]) == set(HOSTS)

    # Killed in the middle of a sync: the minions report it to every master.
    fleet.push("web", "2")
    started = masters.operator("sync", "--json")
    assert started.returncode == 0, started.stderr
    interrupted = json.loads(started.stdout)["sync_id"]
    m1.proc.signal(signal.SIGKILL)
    killed = time.monotonic()
    # At once: the operator's command finds whichever master leads by the time it asks.
    code, document = sync_wait(masters)
    answered_s = time.monotonic() - killed
    assert code == 0, document
    assert roles(masters).get(m2.address) == "leader"
    for host in HOSTS:
        assert fleet.installed(host, "web") == ["1", "2"]
    # The interrupted sync's reports are all with the new leader, each once.
    fleet.wait_for(
        lambda: reports_of(m2, interrupted) == dict.fromkeys(HOSTS, 1),
        "the interrupted sync's reports with m2",
    )
    rows = {row["address"]: row for row in status(masters)["masters"]}
    assert rows[m1.address]["role"] == "unreachable"
    assert rows[m2.address]["term"] > 1
    # Not an assertion on speed: the figure the issue asks for, in the test output.
    print(f"SIGKILL of the leader to the first answered sync --wait: {answered_s:.2f} s")


def test_sigterm_hands_over_at_once(two_masters: tuple[ProcessFleet, Masters]) -> None:
    fleet, masters = two_masters
    m1, m2 = masters.by_name["m1"], masters.by_name["m2"]
    fleet.wait_for(lambda: roles(masters).get(m2.address) == "standby", "m2 standing by")
    m1.proc.signal(signal.SIGTERM)
    stopped = time.monotonic()
    fleet.wait_for(lambda: "took the leadership" in m2.proc.log(), "m2 leading")
    handover_s = time.monotonic() - stopped
    assert m1.proc.popen.wait(timeout=30) == 0, "a master stops cleanly on SIGTERM"
    code, document = sync_wait(masters)
    assert code == 0, document
    print(f"SIGTERM of the leader to the standby leading: {handover_s:.2f} s")


@pytest.mark.parametrize("two_masters", ["consul"], indirect=True)
def test_a_paused_leader_is_replaced_and_cannot_make_any_minion_act(
    two_masters: tuple[ProcessFleet, Masters], consul_server: ConsulServer
) -> None:
    """Split brain: the leader is stopped past its session's TTL, the standby takes over and
    syncs; the old leader, resumed, moves no minion and steps down."""
    fleet, masters = two_masters
    m1, m2 = masters.by_name["m1"], masters.by_name["m2"]
    fleet.wait_for(lambda: roles(masters).get(m2.address) == "standby", "m2 standing by")
    code, document = sync_wait(masters)
    assert code == 0, document

    m1.proc.pause()
    # Past the session's TTL on the double's clock: Consul invalidates the session (twice
    # the TTL after its last renew) and the lock frees after its lock-delay.
    consul_server.advance(25.0)
    fleet.wait_for(lambda: "took the leadership" in m2.proc.log(), "m2 leading")
    fleet.push("web", "2")
    code, document = sync_wait(masters)
    assert code == 0, document
    synced_by_m2 = document["sync_id"]
    for host in HOSTS:
        assert fleet.installed(host, "web") == ["1", "2"]

    m1.proc.resume()
    fleet.wait_for(lambda: "lost the leadership" in m1.proc.log(), "m1 stepping down")
    fleet.wait_for(
        lambda: roles(masters) == {m1.address: "standby", m2.address: "leader"},
        "one leader: m2",
    )
    # Whatever m1 sent before it stepped down moved nobody; m2's sync stands as it was.
    code, document = sync_wait(masters)
    assert code == 0, document
    for host in HOSTS:
        assert fleet.installed(host, "web") == ["1", "2"]
    assert reports_of(m2, synced_by_m2) == dict.fromkeys(HOSTS, 1), "each once, none lost"


def reports_of(master: Master, sync_id: str) -> dict[str, int]:
    """How many reports `master`'s database holds for `sync_id`, per host."""
    path = master.data_dir / "master.db"
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5.0)) as db:
        rows = db.execute(
            "SELECT host, count(*) FROM reports WHERE sync_id = ? GROUP BY 1", (sync_id,)
        )
        return dict(rows.fetchall())
