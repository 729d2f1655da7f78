"""Processes dying or freezing: the master killed mid-sync, a minion killed mid-extraction,
a minion paused through several syncs."""

from __future__ import annotations

import functools
import json
import re
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from fault_fleet import Figures, FleetFactory, many_files
from process_fleet import ProcessFleet

from daybook.install.lock import LOCK_NAME
from daybook.model.sync import Sync
from daybook_testing.processes import Proc
from daybook_testing.waiting import wait_for

pytestmark = pytest.mark.faults

# Enough files that an extraction is still running when the test looks at it.
BIG_FILES = 4000
BIG_FILE_BYTES = 2048


def test_a_minion_killed_mid_extraction_leaves_nothing_half_installed(
    make_fleet: FleetFactory, figures: Figures
) -> None:
    fleet = make_fleet(splay_s=0.0)
    fleet.push("web", "1")
    fleet.map("web-*", "web")
    fleet.start_master()
    minion = fleet.start_minion("web-1")
    fleet.wait_converged(["web-1"], {"web": ["1"]})

    files = many_files(BIG_FILES, BIG_FILE_BYTES)
    fleet.push("web", "2", files)

    def extracting() -> Path | None:
        # Past the first directory of files: the extraction is under way, not just starting.
        return next((p for p in fleet.partials("web-1", "web") if (p / "d002").exists()), None)

    staging = wait_for(extracting, "the extraction of web 2 under way", timeout_s=20)
    # A minion process installs in a child of its own (minion.install_child).
    installers = children(minion.pid)
    minion.kill()
    lock = fleet.install_dir("web-1") / LOCK_NAME

    assert staging.is_dir(), "the dead minion's staging tree is left as it was"
    assert fleet.installed("web-1", "web") == ["1"], "no partial version is visible"
    owner = int(lock.read_text())
    assert owner in installers, "the dead minion's install child still owns the lock file"
    wait_for(lambda: not running(owner), "the install child to die with its minion")

    restarted = time.monotonic()
    fleet.start_minion("web-1")
    fleet.wait_converged(["web-1"], {"web": ["1", "2"]})
    figures["recovery_s"] = time.monotonic() - restarted

    assert fleet.partials("web-1", "web") == [], "the stale staging tree was removed"
    installed = fleet.install_dir("web-1") / "web" / "2"
    assert sum(1 for p in installed.rglob("f*") if p.is_file()) == BIG_FILES
    sample = installed / "d039" / "f03999"
    assert sample.read_bytes() == files["d039/f03999"]
    assert "removing the leftover" in fleet.minions["web-1"].log()


def children(pid: int) -> set[int]:
    """The processes `pid` started, from any of its threads."""
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        found.update(int(child) for child in (task / "children").read_text().split())
    return found


def running(pid: int) -> bool:
    """Alive, not a zombie waiting to be reaped."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def test_a_master_killed_mid_sync_loses_and_duplicates_no_result(
    make_fleet: FleetFactory, figures: Figures
) -> None:
    hosts = ("web-1", "web-2", "web-3")
    # Splay spreads the minions' starts: when the master dies one is extracting, others
    # are still waiting to begin.
    fleet = make_fleet(splay_s=0.6)
    fleet.push("web", "1")
    fleet.map("web-*", "web")
    master = fleet.start_master()
    for host in hosts:
        fleet.start_minion(host)
    fleet.wait_converged(hosts, {"web": ["1"]})

    fleet.push("web", "2", many_files(2000, 1024))
    started = fleet.sync()
    assert started.expected == hosts

    def extracting() -> bool:
        return any((p / "d002").exists() for host in hosts for p in fleet.partials(host, "web"))

    wait_for(extracting, "a minion extracting web 2", timeout_s=20)
    master.kill()
    restarted = time.monotonic()
    fleet.start_master(same_ports=True)

    def all_results() -> Sync | None:
        summary = fleet.client.sync_result(started.sync_id)
        return summary if summary.complete else None

    summary = wait_for(all_results, "every result of the interrupted sync")
    figures["recovery_s"] = time.monotonic() - restarted
    assert summary.expected == hosts
    assert all(report.ok for report in summary.results.values())
    fleet.wait_converged(hosts, {"web": ["1", "2"]})
    for host in hosts:
        report = summary.results[host]
        assert sorted(report.services["web"].installed + report.services["web"].present) == [
            "1",
            "2",
        ]

    assert fleet.unanswered() == {}, "every sync got every expected host's result"
    counts = fleet.reports_per_sync_and_host()
    assert [key for key, count in counts.items() if count > 1] == [], "nothing recorded twice"
    figures["reports"] = sum(counts.values())


def web_1_and_2(make_fleet: FleetFactory, **options: Any) -> tuple[ProcessFleet, Proc]:
    """A master and minions web-1 and web-2, both with web 1 installed; and web-2's process."""
    fleet = make_fleet(splay_s=0.0, **options)
    fleet.push("web", "1")
    fleet.map("web-*", "web")
    fleet.start_master()
    fleet.start_minion("web-1")
    web_2 = fleet.start_minion("web-2")
    fleet.wait_converged(["web-1", "web-2"], {"web": ["1"]})
    return fleet, web_2


def test_a_paused_minion_is_shown_down_and_catches_up_when_resumed(
    make_fleet: FleetFactory, figures: Figures
) -> None:
    fleet, paused = web_1_and_2(make_fleet)

    paused.pause()
    paused_at = time.monotonic()
    versions = ["1"]
    for version in ("2", "3", "4"):
        fleet.push("web", version)
        versions.append(version)
        sync = fleet.sync()
        wait_for(
            functools.partial(fleet.has_result, sync.sync_id, "web-1"),
            f"web-1's result for the sync of web {version}",
        )
        if version == "2":
            fleet.wait_down("web-2")
            figures["shown_down_after_s"] = time.monotonic() - paused_at
        else:
            assert sync.expected == ("web-1",), "a host shown down is not waited for"
    fleet.wait_converged(["web-1"], {"web": versions})
    assert fleet.installed("web-2", "web") == ["1"]

    paused.resume()
    resumed = time.monotonic()
    fleet.wait_up("web-2")
    fleet.wait_converged(["web-1", "web-2"], {"web": versions})
    figures["recovery_s"] = time.monotonic() - resumed
    # The syncs issued before it was shown down waited for it: they have its answer now.
    wait_for(lambda: fleet.unanswered() == {}, "every sync answered by every expected host")
    counts = fleet.reports_per_sync_and_host()
    assert [key for key, count in counts.items() if count > 1] == []


# -- every sync ends ------------------------------------------------------------------------


def api_json(fleet: ProcessFleet, path: str) -> Any:
    url = f"http://127.0.0.1:{fleet.ports['http']}{path}"
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)


def test_a_minion_killed_mid_sync_is_named_when_the_sync_ends_incomplete(
    make_fleet: FleetFactory, figures: Figures
) -> None:
    fleet, doomed = web_1_and_2(make_fleet)

    fleet.push("web", "2", many_files(BIG_FILES, BIG_FILE_BYTES))
    # A deadline far off: the sync must end because web-2 is down, not because time ran out.
    started = fleet.client.start_sync(None, deadline_s=600.0)
    wait_for(
        lambda: any((p / "d002").exists() for p in fleet.partials("web-2", "web")),
        "web-2 extracting web 2",
        timeout_s=20,
    )
    doomed.kill()
    killed = time.monotonic()

    def ended() -> Sync | None:
        summary = fleet.client.sync_result(started.sync_id)
        return None if summary.state == "running" else summary

    summary = wait_for(ended, "the sync to end without web-2", timeout_s=30)
    figures["closed_after_kill_s"] = time.monotonic() - killed
    assert summary.state == "incomplete"
    assert summary.results["web-1"].ok
    assert summary.missing == ("web-2",)
    assert list(summary.silent) == ["web-2"]
    assert summary.silent["web-2"] is not None, "web-2 is named as down"

    document = api_json(fleet, f"/api/v1/syncs/{started.sync_id}")
    assert document["state"] == "incomplete"
    assert document["silent"]["web-2"]["reason"] == "down"
    listed = api_json(fleet, "/api/v1/syncs")["syncs"]
    assert next(s for s in listed if s["sync_id"] == started.sync_id)["state"] == "incomplete"
    status = json.loads(fleet.cli("status", "--json").stdout)
    shown = next(s for s in status["syncs"] if s["sync_id"] == started.sync_id)
    assert (shown["state"], list(shown["silent"])) == ("incomplete", ["web-2"])
    with urllib.request.urlopen(f"http://127.0.0.1:{fleet.ports['http']}/metrics") as response:
        metrics = response.read().decode()
    # The automatic sync of the push waited for web-2 too, and may have ended the same way.
    ended_incomplete = re.search(
        r'daybook_syncs_completed_total\{result="incomplete"\} (\S+)', metrics
    )
    assert ended_incomplete is not None
    assert float(ended_incomplete[1]) >= 1


def test_a_minion_paused_past_the_deadline_answers_late(
    make_fleet: FleetFactory, figures: Figures
) -> None:
    # Shown down only long after the deadline: the sync ends because time ran out.
    fleet, paused = web_1_and_2(make_fleet, down_after_s=8.0)

    fleet.push("web", "2")
    paused.pause()
    result = fleet.cli("sync", "--wait", "--timeout", "1", "--json")
    assert result.returncode == 1, result.stderr
    document = json.loads(result.stdout)
    assert document["state"] == "incomplete"
    assert document["missing"] == ["web-2"]
    assert document["silent"] == {"web-2": {"reason": "no answer"}}
    assert document["results"]["web-1"]["ok"] is True

    paused.resume()
    resumed = time.monotonic()
    sync_id = document["sync_id"]
    wait_for(functools.partial(fleet.has_result, sync_id, "web-2"), "web-2's late answer")
    figures["late_answer_after_resume_s"] = time.monotonic() - resumed
    late = api_json(fleet, f"/api/v1/syncs/{sync_id}")
    assert late["results"]["web-2"]["late"] is True
    assert late["state"] == "incomplete", "a late answer does not reopen the sync"
    assert late["closed_at"] == document["closed_at"]
    counts = fleet.reports_per_sync_and_host()
    assert [key for key, count in counts.items() if count > 1] == []
