"""The HTTP API's documents from hand-built snapshots, and the read-only history reader
against a real results database written at the same time."""

from __future__ import annotations

import threading
from dataclasses import replace
from pathlib import Path

import pytest
from messages import report

from daybook.errors import FleetError
from daybook.model.fleet import HostStatus
from daybook.model.results import Report, ServiceResult
from daybook.model.rollout import BatchSize, start_rollout
from daybook.model.sync import Sync
from master import api
from master.database import ResultsDatabase, ResultsReader
from master.http_server import HttpApp
from master.metrics import MasterMetrics
from master.snapshot import FleetSnapshot, SnapshotBox

NOW = 1_000.0


def status(host: str, *, seen: float = NOW, last: Report | None = None) -> HostStatus:
    return HostStatus(host, True, seen, "boot", NOW - 100, last)


def result_report(
    host: str, installed: tuple[str, ...], failed: dict[str, str] | None = None
) -> Report:
    return replace(
        report(host, "s1", finished_at=NOW - 1),
        services={"web": ServiceResult(present=installed, failed=failed or {})},
        installed={"web": installed},
    )


def snapshot(**hosts: HostStatus) -> FleetSnapshot:
    return FleetSnapshot(
        epoch=7,
        taken_at=NOW,
        down_after_s=15.0,
        hosts=hosts,
        mappings={"web-*": ("web",), "web-9": ("web", "db"), "db-*": ("db",)},
        sizes={"web": {"1.9": 10, "1.10": 20}, "db": {"5": 30}},
        state_digest="a" * 32,
        state_sync_id="s1",
    )


@pytest.fixture
def fleet() -> FleetSnapshot:
    return snapshot(
        **{
            "web-1": status("web-1", last=result_report("web-1", ("1.9", "1.10"))),
            "web-2": status("web-2", seen=NOW - 60, last=result_report("web-2", ("1.9",))),
            "web-3": status("web-3", last=result_report("web-3", ("1.9",), {"1.10": "bad <b>"})),
            "web-9": status("web-9"),
            "mail-1": status("mail-1"),
        }
    )


def test_fleet_counts_and_liveness_at_the_readers_clock(fleet: FleetSnapshot) -> None:
    document = api.fleet_document(fleet, NOW)
    assert document["counts"] == {"hosts": 5, "up": 4, "down": 1, "failing": 1, "never_synced": 2}
    assert document["hosts"]["web-2"]["up"] is False
    assert document["state"] == {"sync_id": "s1", "digest": "a" * 32}
    later = api.fleet_document(fleet, NOW + 30)
    assert later["counts"]["up"] == 0
    assert fleet.count_up(NOW) == (4, 1)


def test_a_host_the_loop_marked_down_stays_down_though_recently_seen() -> None:
    cut_off = HostStatus("web-1", False, NOW, "boot", NOW - 100, None)  # its key was deleted
    document = api.fleet_document(snapshot(**{"web-1": cut_off}), NOW)
    assert document["hosts"]["web-1"]["up"] is False
    assert document["counts"]["down"] == 1


def test_services_count_versions_and_find_laggards(fleet: FleetSnapshot) -> None:
    document = api.services_document(fleet)
    web = document["services"]["web"]
    assert web["versions"] == ["1.9", "1.10"]  # version order, not string order
    assert web["newest"] == "1.10"
    assert web["bytes"] == {"1.9": 10, "1.10": 20}
    assert web["installed"] == {"1.9": 3, "1.10": 1}
    assert web["mapped_hosts"] == ["web-1", "web-2", "web-3", "web-9"]
    # web-9 never reported: it cannot be shown to have the newest version.
    assert web["lagging"] == ["web-2", "web-3", "web-9"]
    assert web["failing"] == ["web-3"]
    db = document["services"]["db"]
    assert db["mapped_hosts"] == ["web-9"]
    assert db["installed"] == {}


def test_a_host_document_says_what_it_should_have_and_lacks(fleet: FleetSnapshot) -> None:
    document = api.host_document(fleet, "web-3", NOW)
    assert document is not None
    assert document["desired"] == {"pattern": "web-*", "services": ["web"]}
    assert document["behind"] == {"web": ["1.10"]}
    assert document["last_sync"]["services"]["web"]["failed"] == {"1.10": "bad <b>"}
    nine = api.host_document(fleet, "WEB-9", NOW)
    assert nine is not None
    assert nine["host"] == "web-9"
    assert nine["behind"] == {"web": ["1.9", "1.10"], "db": ["5"]}
    assert api.host_document(fleet, "web-404", NOW) is None


def test_mappings_show_the_winner_of_each_host(fleet: FleetSnapshot) -> None:
    document = api.mappings_document(fleet)
    assert document["mappings"] == {"db-*": ["db"], "web-*": ["web"], "web-9": ["web", "db"]}
    assert document["hosts"] == {
        "db-*": [],
        "web-*": ["web-1", "web-2", "web-3"],
        "web-9": ["web-9"],
    }
    assert document["unmatched"] == ["mail-1"]


def test_before_the_watchers_answer_the_documents_say_not_ready() -> None:
    empty = FleetSnapshot(epoch=1, taken_at=NOW, down_after_s=15.0, hosts={"a": status("a")})
    assert api.services_document(empty) == {"ready": False, "services": {}}
    assert api.mappings_document(empty)["ready"] is False
    document = api.host_document(empty, "a", NOW)
    assert document is not None
    assert document["desired"] is None
    assert api.fleet_document(empty, NOW)["state"] is None


def test_the_box_hands_over_whole_snapshots(fleet: FleetSnapshot) -> None:
    box = SnapshotBox(fleet)
    newer = snapshot()
    box.publish(newer)
    assert box.current is newer
    assert box.published == 1


# -- the read-only history --------------------------------------------------------------------


def add_sync(db: ResultsDatabase, sync_id: str, issued_at: float, *expected: str) -> None:
    db.add_sync(Sync(sync_id, "*", "operator", issued_at, tuple(expected)))


def test_the_reader_tallies_syncs_newest_first(tmp_path: Path) -> None:
    db = ResultsDatabase(tmp_path / "master.db")
    add_sync(db, "old", 1.0, "a", "b")
    add_sync(db, "new", 2.0, "a", "b", "c")
    db.add_report(report("a", "old", finished_at=3.0), received_at=3.0)
    db.add_report(report("a", "new", finished_at=4.0, ok=False), received_at=4.0)
    # A later report of the same host is the one that counts.
    db.add_report(report("a", "new", finished_at=5.0), received_at=5.0)
    db.add_report(report("b", "new", finished_at=5.0, ok=False), received_at=5.0)
    db.add_report(report("stranger", "new", finished_at=5.0), received_at=5.0)
    db.commit()
    reader = ResultsReader(db.path)
    (new_sync, new), (_old_sync, old) = reader.sync_tallies(10)
    assert (new_sync.sync_id, new.expected, new.answered, new.failed, new.missing) == (
        "new",
        3,
        2,
        1,
        1,
    )
    assert not new.complete
    assert (old.answered, old.missing, old.failed) == (1, 1, 0)
    assert [sync.sync_id for sync, _tally in reader.sync_tallies(1)] == ["new"]
    record = reader.load_sync("new")
    assert record is not None
    assert record.results["a"].ok
    assert record.missing == ("c",)
    assert reader.load_sync("nope") is None
    db.close()


def test_the_reader_sees_committed_batches_while_the_loop_writes(tmp_path: Path) -> None:
    db = ResultsDatabase(tmp_path / "master.db")
    add_sync(db, "one", 1.0, "a")
    db.commit()
    add_sync(db, "two", 2.0, "a")  # not committed yet: the loop is mid-batch
    seen: list[list[str]] = []
    reader = ResultsReader(db.path)
    thread = threading.Thread(
        target=lambda: seen.append([sync.sync_id for sync, _tally in reader.sync_tallies(10)])
    )
    thread.start()
    thread.join(10.0)
    assert seen == [["one"]]
    db.commit()
    assert [sync.sync_id for sync, _tally in reader.sync_tallies(10)] == ["two", "one"]
    db.close()


def test_an_unreadable_database_is_a_fleet_error(tmp_path: Path) -> None:
    with pytest.raises(FleetError, match="cannot read the results database"):
        ResultsReader(tmp_path / "missing.db").sync_tallies(5)


# -- the routes, without a socket ------------------------------------------------------------


def make_app(tmp_path: Path, fleet: FleetSnapshot, *, loopback_only: bool) -> HttpApp:
    return HttpApp(
        snapshots=SnapshotBox(fleet),
        history=ResultsReader(tmp_path / "master.db"),
        metrics=MasterMetrics(),
        clock=lambda: NOW,
        loopback_only=loopback_only,
    )


@pytest.mark.parametrize(
    ("host", "allowed"),
    [
        ("localhost", True),
        ("LOCALHOST:8080", True),
        ("127.0.0.1:4508", True),
        ("127.1.2.3", True),
        ("[::1]:4508", True),
        ("grafana.localhost", True),
        ("", False),
        ("10.0.0.5:4508", False),
        ("master.example.com", False),
        ("localhost.example.com", False),
    ],
)
def test_on_loopback_only_loopback_names_are_answered(
    tmp_path: Path, fleet: FleetSnapshot, host: str, allowed: bool
) -> None:
    response = make_app(tmp_path, fleet, loopback_only=True).handle("/api/v1/fleet", {"host": host})
    assert (response.status == 200) is allowed
    assert response.status in (200, 403)
    # Bound elsewhere by the operator's choice, any name reaches it.
    anywhere = make_app(tmp_path, fleet, loopback_only=False)
    assert anywhere.handle("/api/v1/fleet", {"host": host}).status == 200


def test_an_unreadable_history_is_a_503_and_the_rest_still_answers(
    tmp_path: Path, fleet: FleetSnapshot
) -> None:
    app = make_app(tmp_path, fleet, loopback_only=True)
    response = app.handle("/api/v1/syncs", {})
    assert response.status == 503
    assert b"cannot read the results database" in response.body
    assert app.handle("/api/v1/services", {}).status == 200


def test_a_rolling_sync_is_shown_with_its_batches_answers(tmp_path: Path) -> None:
    db = ResultsDatabase(tmp_path / "master.db")
    add_sync(db, "b1", 2.0, "a", "b")
    db.add_report(report("a", "b1", finished_at=3.0), received_at=3.0)
    db.add_report(report("b", "b1", finished_at=3.0, ok=False), received_at=3.0)
    db.commit()
    rollout = start_rollout(
        rollout_id="r1",
        target="*",
        hosts=("a", "b", "c"),
        size=BatchSize(count=2),
        max_failures=0,
        batch_wait_s=0.0,
        batch_timeout_s=5.0,
        now=1.0,
    ).with_batch_started("b1")
    reader = ResultsReader(db.path)
    document = api.sync_document(reader, "r1", (rollout,))
    assert document is not None
    assert document["state"] == "running"
    assert document["batches"] == [["a", "b"], ["c"]]
    assert set(document["results"]) == {"a", "b"}
    assert document["rolling"]["running_batch"] == 1
    halted = rollout.with_batch_result(reader.load_sync("b1").results, now=4.0)  # type: ignore[union-attr]
    document = api.sync_document(reader, "r1", (halted,))
    assert document is not None
    assert (document["state"], document["halted"]) == ("halted", True)
    assert document["failed"] == {"b": "failed"}
    assert document["not_reached"] == ["c"]
    assert document["why"].startswith("1 host(s) failed")
    # A plain sync id is read from the history as before.
    plain = api.sync_document(reader, "b1", (halted,))
    assert plain is not None
    assert "batches" not in plain
    db.close()
