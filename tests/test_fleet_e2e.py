"""End to end: real `daybook master` and `daybook minion` processes on 127.0.0.1, with the
embedded file store and file registry. Ports are ephemeral and read back from the master's
`master.json`; every wait is on a condition with a deadline (tests/process_fleet.py)."""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from archives import make_asset
from process_fleet import Proc, ProcessFleet

from daybook.registry.file import FileRegistry
from daybook.store.local import LocalStore
from daybook_testing.waiting import wait_for

pytestmark = pytest.mark.e2e


def make_fleet(root: Path, splay_s: float = 0.1) -> ProcessFleet:
    """A fleet on its own store directory and mappings file, as the README demo runs."""
    return ProcessFleet(
        root,
        store=LocalStore(root / "store"),
        registry=FileRegistry(root / "mappings.json"),
        splay_s=splay_s,
    )


def close(fleet: ProcessFleet) -> None:
    failures = fleet.close()
    assert not failures, "\n".join(failures)


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[ProcessFleet]:
    running = make_fleet(tmp_path)
    try:
        yield running
    finally:
        close(running)


def sync_json(fleet: ProcessFleet, *args: str) -> tuple[int, dict[str, Any]]:
    result = fleet.cli("sync", "--json", *args)
    assert result.stdout, result.stderr
    document: dict[str, Any] = json.loads(result.stdout)
    return result.returncode, document


def test_operator_sync_gets_every_result_back(fleet: ProcessFleet) -> None:
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


def test_new_assets_and_mapping_changes_reach_minions_with_no_operator(fleet: ProcessFleet) -> None:
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


def test_a_push_reaches_the_minions_with_no_operator_and_no_store_poll(tmp_path: Path) -> None:
    # The master would not list the store again for an hour: only the push can tell it.
    fleet = ProcessFleet(
        tmp_path,
        store=LocalStore(tmp_path / "store"),
        registry=FileRegistry(tmp_path / "mappings.json"),
        splay_s=0.1,
        store_poll_s=3600.0,
    )
    try:
        fleet.push("web", "1")
        fleet.map("web-*", "web")
        fleet.start_master()
        fleet.start_minion("web-1")
        fleet.wait_converged(["web-1"], {"web": ["1"]})

        pushed = fleet.cli("push", str(make_asset(tmp_path / "assets", "web", "2")))
        assert pushed.returncode == 0, pushed.stderr
        assert pushed.stderr == ""
        fleet.wait_converged(["web-1"], {"web": ["1", "2"]})
    finally:
        close(fleet)


def test_a_minion_started_after_the_event_catches_up(fleet: ProcessFleet) -> None:
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


def test_a_killed_minion_is_reported_missing_then_down(fleet: ProcessFleet) -> None:
    fleet.push("web", "1")
    fleet.map("web-*", "web")
    fleet.start_master()
    fleet.start_minion("web-1")
    fleet.start_minion("web-2")
    fleet.wait_ready("web-1", "web-2")

    fleet.minions["web-2"].kill()
    code, document = sync_json(fleet, "--wait", "--timeout", "1.5")
    assert code == 1
    assert document["missing"] == ["web-2"]
    assert document["results"]["web-1"]["ok"] is True

    wait_for(lambda: not fleet.status().hosts["web-2"].up, "web-2 shown down")
    code, document = sync_json(fleet, "--wait", "--timeout", "10")
    assert code == 0
    assert document["expected"] == ["web-1"]


def test_a_master_killed_and_restarted_mid_sync_loses_no_result(tmp_path: Path) -> None:
    fleet = make_fleet(tmp_path, splay_s=0.5)  # minions still busy when the master dies
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
        fleet.master.kill()

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
        close(fleet)


def test_two_minions_with_the_same_services_pull_in_parallel(fleet: ProcessFleet) -> None:
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


def test_sync_against_a_stopped_master_is_one_clear_error(fleet: ProcessFleet) -> None:
    fleet.start_master()
    assert fleet.master is not None
    assert fleet.master.stop() == 0
    result = fleet.cli("sync", "--wait")
    assert result.returncode == 1
    assert result.stderr.startswith("daybook: ")
    assert "master.json" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_minion_still_waiting_for_its_master_stops_cleanly(tmp_path: Path) -> None:
    # Ports nothing listens on: the minion waits to learn the master's key.
    ports = []
    for _ in range(4):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            ports.append(str(probe.getsockname()[1]))
    env = {k: v for k, v in os.environ.items() if not k.startswith("DAYBOOK_")}
    env.update(
        DAYBOOK_DATA_DIR=str(tmp_path / "web-1"),
        DAYBOOK_STORE=f"file://{tmp_path / 'store'}",
        DAYBOOK_REGISTRY=f"file://{tmp_path / 'mappings.json'}",
        DAYBOOK_HOSTNAME="web-1",
        DAYBOOK_MASTER="127.0.0.1",
        DAYBOOK_PORT=ports[0],
        DAYBOOK_RESULTS_PORT=ports[1],
        DAYBOOK_CONTROL_PORT=ports[2],
        DAYBOOK_KEY_PORT=ports[3],
    )
    argv = [sys.executable, "-m", "daybook", "-v", "minion"]
    minion = Proc("web-1", argv, env, tmp_path / "web-1.log")
    wait_for(lambda: "cannot learn the master's key yet" in minion.log(), "the minion waiting")
    minion.signal(signal.SIGTERM)
    assert minion.wait() == 0, minion.log()
    assert "Traceback" not in minion.log()
