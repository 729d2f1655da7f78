"""Load: 200 minions (one swarm process, each minion with its own sockets) through 50
consecutive syncs with the assets changing between them. Nothing lost, nothing recorded
twice, and the master's memory flat. Timings are printed and recorded, never asserted."""

from __future__ import annotations

import json
import statistics
import time
from contextlib import closing
from pathlib import Path
from typing import NamedTuple

import pytest
from fault_fleet import Figures, FleetFactory
from process_fleet import Proc, ProcessFleet

from daybook_testing.waiting import wait_for

pytestmark = [pytest.mark.faults, pytest.mark.slow]

MINIONS = 200
SYNCS = 50
PREFIX = "load"
MIB = 1024 * 1024
# Generous: the master holds the latest 64 syncs' results in memory, which fill up during
# the run; what must not happen is growth per sync without bound.
MAX_GROWTH_BYTES = 64 * MIB
# The recent-syncs book holds 64 syncs (two per round here), so from round 32 on the
# master's memory is in its steady state; its growth from there on is the leak check.
STEADY_ROUND = 35
MAX_STEADY_GROWTH_BYTES = 16 * MIB


class Recorded(NamedTuple):
    """What the master's database holds at the end of the run."""

    syncs: int
    expected: int
    reports: int
    duplicates: int
    strays: int


def all_reported(fleet: ProcessFleet, swarm: Proc) -> bool:
    """Every minion up with an ok report (and the swarm still running)."""
    assert swarm.alive(), f"the swarm died:\n{swarm.tail()}"
    hosts = fleet.status().hosts
    return len(hosts) == MINIONS and all(
        h.up and h.last_report is not None and h.last_report.ok for h in hosts.values()
    )


def push_and_sync(fleet: ProcessFleet, number: int) -> float:
    """Version `number` pushed, then synced ok on every minion; returns the seconds it took."""
    began = time.monotonic()
    fleet.push("app", str(number))
    summary = fleet.client.run_sync(None, wait=True, timeout_s=120)
    took_s = time.monotonic() - began
    assert len(summary.expected) == MINIONS, summary.missing
    assert summary.complete, f"sync {number}: missing {summary.missing}"
    assert summary.ok, f"sync {number}: {[h for h, r in summary.results.items() if not r.ok]}"
    assert all(str(number) in r.installed["app"] for r in summary.results.values())
    return took_s


def count_the_records(fleet: ProcessFleet) -> Recorded:
    """The syncs, expected answers, reports, duplicated and unexpected reports on record."""
    with closing(fleet.database()) as db:
        syncs = db.execute("SELECT count(*) FROM syncs").fetchone()[0]
        expected = db.execute("SELECT count(*) FROM expected").fetchone()[0]
        reports = db.execute("SELECT count(*) FROM reports").fetchone()[0]
        duplicates = db.execute(
            "SELECT count(*) FROM "
            "(SELECT 1 FROM reports GROUP BY sync_id, host HAVING count(*) > 1)"
        ).fetchone()[0]
        strays = db.execute(
            "SELECT count(*) FROM reports r WHERE NOT EXISTS "
            "(SELECT 1 FROM expected e WHERE e.sync_id = r.sync_id AND e.host = r.host)"
        ).fetchone()[0]
    return Recorded(syncs, expected, reports, duplicates, strays)


def record_the_figures(
    figures: Figures, tmp_path: Path, round_s: list[float], rss: dict[int, int], **counts: int
) -> dict[str, float]:
    """Keep, print and write the run's figures; returns the master's memory samples in MiB."""
    figures["minions"] = MINIONS
    figures["syncs"] = SYNCS
    for name, count in counts.items():
        figures[name] = count
    figures["sync_s_median"] = statistics.median(round_s)
    figures["sync_s_max"] = max(round_s)
    figures["total_s"] = sum(round_s)
    figures["master_rss_mib_start"] = rss[0] / MIB
    figures["master_rss_mib_end"] = rss[SYNCS] / MIB
    samples = {str(n): round(v / MIB, 1) for n, v in rss.items()}
    (tmp_path / "load-report.json").write_text(json.dumps({**figures.values, "rss_mib": samples}))
    print(f"load: {json.dumps(figures.values)} rss_mib={samples}")
    return samples


@pytest.mark.timeout(300)
def test_200_minions_through_50_syncs_lose_and_duplicate_nothing(
    make_fleet: FleetFactory, figures: Figures, tmp_path: Path
) -> None:
    fleet = make_fleet(splay_s=0.0, heartbeat_s=1.0, down_after_s=15.0, republish_s=5.0)
    fleet.push("app", "0")
    fleet.map(f"{PREFIX}-*", "app")
    master = fleet.start_master()
    started = time.monotonic()
    swarm = fleet.start_swarm(MINIONS, PREFIX)
    wait_for(lambda: all_reported(fleet, swarm), f"{MINIONS} minions up and synced", timeout_s=120)
    figures["startup_s"] = time.monotonic() - started
    rss = {0: master.rss_bytes()}

    round_s: list[float] = []
    for number in range(1, SYNCS + 1):
        round_s.append(push_and_sync(fleet, number))
        if number % 5 == 0:
            rss[number] = master.rss_bytes()

    # Every sync the master issued, auto (a new version seen) or operator, is accounted for.
    syncs, expected, reports, duplicates, strays = count_the_records(fleet)
    lost = sum(len(hosts) for hosts in fleet.unanswered().values())
    samples = record_the_figures(
        figures,
        tmp_path,
        round_s,
        rss,
        syncs_recorded=syncs,
        reports_expected=expected,
        reports=reports,
        lost=lost,
        duplicates=duplicates,
        unexpected_reports=strays,
    )

    assert lost == 0
    assert duplicates == 0
    # Beyond the expected ones: answers to the start-up sync, issued before any minion ran.
    assert reports - strays == expected
    assert rss[SYNCS] - rss[0] < MAX_GROWTH_BYTES, samples
    assert rss[SYNCS] - rss[STEADY_ROUND] < MAX_STEADY_GROWTH_BYTES, samples
