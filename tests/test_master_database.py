"""The results database: what a master writes survives a restart, duplicates are ignored."""

from __future__ import annotations

import sqlite3
from dataclasses import replace
from pathlib import Path

import pytest
from messages import report

from daybook import wire
from daybook.errors import FleetError
from daybook.model.fleet import HostStatus
from daybook.model.ids import versions_digest
from daybook.model.state import DesiredState
from daybook.model.sync import Answered, Sync
from master.database import ResultsDatabase, ResultsReader


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "master.db"


def test_epochs_increase_across_restarts(db_path: Path) -> None:
    first = ResultsDatabase(db_path)
    epoch = first.next_epoch()
    first.close()
    second = ResultsDatabase(db_path)
    assert second.next_epoch() > epoch
    second.close()


def test_syncs_reports_and_hosts_survive_a_restart(db_path: Path) -> None:
    db = ResultsDatabase(db_path)
    db.add_sync(Sync("s1", "web-*", "operator", 5.0, ("web-1", "web-2"), request_id="q1"))
    assert db.add_report(report("web-1", "s1", finished_at=6.0), received_at=6.5)
    latest = report("web-1", "s1", finished_at=6.0)
    db.save_hosts([HostStatus("web-1", True, 6.5, "boot", 1.0, latest)])
    db.commit()
    db.close()

    db = ResultsDatabase(db_path)
    record = db.load_sync("s1")
    assert record is not None
    assert record.expected == ("web-1", "web-2")
    assert record.target == "web-*"
    assert list(record.results) == ["web-1"]
    assert record.request_id == "q1"
    assert db.sync_for_request("q1") is not None
    assert db.sync_for_request("nope") is None
    assert db.load_sync("unknown") is None
    (host,) = db.load_hosts()
    assert host.host == "web-1"
    assert host.boot_id == "boot"
    assert host.last_report == report("web-1", "s1", finished_at=6.0)
    db.close()


def test_uncommitted_work_is_lost_but_committed_work_is_not(db_path: Path) -> None:
    db = ResultsDatabase(db_path)
    db.add_sync(Sync("kept", "*", "auto", 1.0, ()))
    db.commit()
    db.add_sync(Sync("lost", "*", "auto", 2.0, ()))
    # A crash: the connection goes away without a commit.
    db._db.close()
    db = ResultsDatabase(db_path)
    assert db.load_sync("kept") is not None
    assert db.load_sync("lost") is None
    db.close()


def test_a_report_sent_twice_is_recorded_once(db_path: Path) -> None:
    db = ResultsDatabase(db_path)
    assert db.add_report(report("web-1"), received_at=1.0)
    assert not db.add_report(report("web-1"), received_at=2.0)
    assert db.counts()["reports"] == 1
    db.close()


def test_a_report_for_an_unknown_sync_is_still_recorded(db_path: Path) -> None:
    db = ResultsDatabase(db_path)
    assert db.add_report(report("web-1", "from-before-a-wipe"), received_at=1.0)
    db.close()


def test_the_desired_state_is_kept(db_path: Path) -> None:
    db = ResultsDatabase(db_path)
    assert db.load_state() is None
    state = wire.encode_state(DesiredState({"web-*": ("web",)}, {"web": versions_digest(["1"])}))
    db.save_state(state, "s9")
    db.commit()
    db.close()
    db = ResultsDatabase(db_path)
    assert db.load_state() == (state, "s9")
    db.close()


def test_recent_syncs_come_oldest_first(db_path: Path) -> None:
    db = ResultsDatabase(db_path)
    for index in range(5):
        db.add_sync(Sync(f"s{index}", "*", "auto", float(index), ()))
    assert [sync.sync_id for sync, _ in db.recent_answers(3)] == ["s2", "s3", "s4"]
    db.close()


def test_recent_syncs_stop_at_the_answers_the_book_would_hold(db_path: Path) -> None:
    db = ResultsDatabase(db_path)
    for index in range(4):
        db.add_sync(Sync(f"s{index}", "*", "auto", float(index), ("a", "b")))
        for host in ("a", "b"):
            db.add_report(report(host, f"s{index}", finished_at=float(index)), received_at=1.0)
    db.add_sync(Sync("s4", "*", "auto", 4.0, ("a", "b")))  # no answers yet

    def held(max_answers: int) -> list[str]:
        return [sync.sync_id for sync, _ in db.recent_answers(64, max_answers)]

    assert held(4) == ["s2", "s3", "s4"]
    assert held(5) == ["s2", "s3", "s4"]
    assert held(6) == ["s1", "s2", "s3", "s4"]
    assert held(0) == ["s4"]  # the newest always comes
    db.close()


def test_recent_syncs_come_with_each_hosts_latest_answer_and_no_reports(db_path: Path) -> None:
    db = ResultsDatabase(db_path)
    db.add_sync(Sync("s1", "*", "auto", 1.0, ("a", "b", "c"), closed_at=9.0))
    db.close_sync(Sync("s1", "*", "auto", 1.0, ("a", "b", "c"), closed_at=9.0, silent={"c": 4.0}))
    db.add_report(report("a", "s1", finished_at=2.0, ok=False), received_at=2.0)
    db.add_report(report("a", "s1", finished_at=3.0), received_at=3.0)
    db.add_report(report("b", "s1", finished_at=5.0, ok=False), received_at=5.0)
    ((sync, answered),) = db.recent_answers(64)
    assert (sync.expected, sync.results, dict(sync.silent)) == (("a", "b", "c"), {}, {"c": 4.0})
    assert answered == {"a": Answered(True, 3.0), "b": Answered(False, 5.0)}
    # The reports are there for whoever asks for the sync.
    loaded = db.load_sync("s1")
    assert loaded is not None
    assert loaded.results == {
        "a": report("a", "s1", finished_at=3.0),
        "b": report("b", "s1", finished_at=5.0, ok=False),
    }
    db.close()


def test_prune_keeps_the_latest_syncs_and_every_hosts_last_report(db_path: Path) -> None:
    db = ResultsDatabase(db_path)
    for index in range(5):
        db.add_sync(Sync(f"s{index}", "*", "auto", float(index), ("a", "b")))
        db.add_report(report("a", f"s{index}", finished_at=float(index)), received_at=1.0)
    db.add_report(report("b", "s0", finished_at=1.5), received_at=1.0)
    db.save_hosts([HostStatus("b", True, 1.0, last_report=report("b", "s0", finished_at=1.5))])
    assert db.prune(keep_syncs=2) == 3
    assert [sync.sync_id for sync, _ in db.recent_answers(10)] == ["s3", "s4"]
    (host,) = db.load_hosts()
    assert host.last_report is not None
    assert db.counts() == {"syncs": 2, "reports": 3, "hosts": 1}
    assert db.prune(keep_syncs=2) == 0
    db.close()


def test_a_newer_schema_is_refused(db_path: Path) -> None:
    ResultsDatabase(db_path).close()
    with sqlite3.connect(db_path) as raw:
        raw.execute("UPDATE meta SET value = ? WHERE key = 'schema'", (b"99",))
    with pytest.raises(FleetError, match="schema version 99"):
        ResultsDatabase(db_path)


def test_an_unusable_path_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(FleetError, match="cannot open the results database"):
        ResultsDatabase(blocker / "master.db")


def test_how_a_sync_ended_is_kept(db_path: Path) -> None:
    db = ResultsDatabase(db_path)
    db.add_sync(Sync("s1", "*", "operator", 1.0, ("a", "b", "c"), deadline=9.0))
    db.add_report(report("a", "s1", finished_at=2.0), received_at=2.0)
    closed = Sync("s1", "*", "operator", 1.0, ("a", "b", "c"), closed_at=9.0)
    db.close_sync(replace(closed, silent={"b": 4.0, "c": None}))
    db.commit()
    loaded = db.load_sync("s1")
    db.close()
    assert loaded is not None
    assert (loaded.state, loaded.deadline, loaded.closed_at) == ("incomplete", 9.0, 9.0)
    assert dict(loaded.silent) == {"b": 4.0, "c": None}
    ((listed, tally),) = ResultsReader(db_path).sync_tallies(5)
    assert (listed.state, tally.state, tally.silent, tally.answered) == (
        "incomplete",
        "incomplete",
        2,
        1,
    )


def test_open_syncs_the_loop_forgot_are_closed_with_their_silent_hosts(db_path: Path) -> None:
    db = ResultsDatabase(db_path)
    db.add_sync(Sync("gone", "*", "auto", 1.0, ("a", "b"), deadline=5.0))
    db.add_sync(Sync("held", "*", "auto", 2.0, ("a",), deadline=5.0))
    db.add_sync(Sync("later", "*", "auto", 3.0, ("a",), deadline=50.0))
    db.add_report(report("a", "gone", finished_at=2.0), received_at=2.0)
    assert db.close_forgotten(10.0, held=["held"]) == 1
    assert db.close_forgotten(10.0, held=["held"]) == 0
    gone, held = db.load_sync("gone"), db.load_sync("held")
    db.close()
    assert gone is not None
    assert held is not None
    assert (gone.closed_at, dict(gone.silent), gone.state) == (10.0, {"b": None}, "incomplete")
    assert held.state == "running"


def test_a_version_1_database_is_upgraded_in_place(db_path: Path) -> None:
    old = sqlite3.connect(db_path)
    old.executescript(
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);"
        "CREATE TABLE syncs (sync_id TEXT PRIMARY KEY, target TEXT NOT NULL, "
        "origin TEXT NOT NULL, issued_at REAL NOT NULL, request_id TEXT);"
        "INSERT INTO meta VALUES ('schema', CAST('1' AS BLOB));"
        "INSERT INTO syncs VALUES ('s0', '*', 'auto', 1.0, NULL);"
    )
    old.commit()
    old.close()
    db = ResultsDatabase(db_path)
    loaded = db.load_sync("s0")
    assert loaded is not None
    assert (loaded.deadline, loaded.closed_at) == (None, None)
    assert db.close_forgotten(5.0, held=[]) == 1
    db.close()


def test_a_batch_a_full_disk_rolled_back_does_not_break_the_batches_after_it(
    db_path: Path,
) -> None:
    """SQLITE_FULL, here from a page limit, rolls the batch back; once there is room again,
    the next batch commits and survives a restart."""
    db = ResultsDatabase(db_path)
    db.save_hosts([HostStatus("web-1", True, 100.0, "boot-1", 90.0)])
    db.commit()
    pages = db._db.execute("PRAGMA page_count").fetchone()[0]
    db._db.execute(f"PRAGMA max_page_count = {pages}")
    many = [HostStatus(f"db-{n:05d}", True, 101.0, "boot-1", 90.0) for n in range(2000)]
    with pytest.raises(sqlite3.OperationalError, match="full"):
        db.save_hosts(many)
    db.commit()  # nothing left to commit: the failure rolled the batch back
    db._db.execute("PRAGMA max_page_count = 1000000")
    db.save_hosts([HostStatus("web-2", True, 102.0, "boot-2", 95.0)])
    db.commit()
    db.close()
    hosts = {status.host for status in ResultsDatabase(db_path).load_hosts()}
    assert hosts == {"web-1", "web-2"}
