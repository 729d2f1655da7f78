"""The master's bookkeeping: liveness, expected hosts, sync completion and waiting operators."""

from __future__ import annotations

from messages import heartbeat, report

from daybook import wire
from daybook.model.sync import Answered, Sync, Tally
from master.ledger import Fleet, SyncBook, Waiter


def test_hosts_are_up_while_heartbeats_keep_coming() -> None:
    fleet = Fleet(down_after_s=15)
    assert fleet.heard(heartbeat("web-1"), now=100.0)
    assert not fleet.heard(heartbeat("web-1"), now=105.0)
    assert fleet.heard(heartbeat("web-1", boot_id="boot2"), now=106.0)  # a restart
    assert fleet.is_up("web-1", 121.0)
    assert not fleet.is_up("web-1", 121.5)
    assert not fleet.is_up("unknown", 100.0)


def test_expected_hosts_are_the_live_ones_matching_the_target() -> None:
    fleet = Fleet(down_after_s=10)
    fleet.heard(heartbeat("web-1"), now=100.0)
    fleet.heard(heartbeat("web-2"), now=95.0)
    fleet.heard(heartbeat("db-1"), now=100.0)
    fleet.heard(heartbeat("web-3"), now=50.0)  # down by now
    assert fleet.expected_for("*", now=104.0) == ("db-1", "web-1", "web-2")
    assert fleet.expected_for("web-*", now=104.0) == ("web-1", "web-2")
    assert fleet.expected_for("WEB-1", now=104.0) == ("web-1",)
    assert fleet.expected_for("web-*", now=106.0) == ("web-1",)
    assert fleet.expected_for("mail-*", now=100.0) == ()


def test_a_resent_older_report_does_not_replace_the_latest() -> None:
    fleet = Fleet(down_after_s=10)
    assert fleet.reported(report("web-1", "s2", finished_at=20.0), now=30.0)
    assert not fleet.reported(report("web-1", "s1", finished_at=10.0), now=31.0)
    record = fleet.get("web-1")
    assert record is not None
    assert record.last_report is not None
    assert record.last_report.sync_id == "s2"
    assert record.last_seen == 31.0


def test_dirty_hosts_are_handed_out_once() -> None:
    fleet = Fleet(down_after_s=10)
    fleet.heard(heartbeat("b"), now=1.0)
    fleet.reported(report("a"), now=2.0)
    assert [r.host for r in fleet.take_dirty()] == ["a", "b"]
    assert fleet.take_dirty() == []


def test_status_lists_every_host_with_its_last_report() -> None:
    fleet = Fleet(down_after_s=10)
    fleet.heard(heartbeat("web-1"), now=100.0)
    fleet.reported(report("web-1"), now=100.0)
    fleet.heard(heartbeat("web-2"), now=80.0)
    status = fleet.status(epoch=7, now=105.0)
    assert status.epoch == 7
    assert status.hosts["web-1"].up
    assert status.hosts["web-1"].last_report == report("web-1")
    assert not status.hosts["web-2"].up
    assert status.hosts["web-2"].last_report is None


def test_a_sync_is_complete_when_every_expected_host_reported() -> None:
    book = SyncBook()
    book.add(Sync("s1", "*", "operator", 1.0, ("a", "b")))
    assert not book.get("s1").complete  # type: ignore[union-attr]
    book.record(report("a"), now=50.0)
    book.record(report("c"), now=50.0)  # not expected: kept, but does not complete anything
    assert not book.get("s1").complete  # type: ignore[union-attr]
    filed = book.record(report("b", ok=False), now=50.0)
    assert filed is not None
    assert not filed.before.complete
    assert filed.after.complete
    summary = book.get("s1")
    assert summary is not None
    assert summary.complete
    assert summary.missing == ()
    assert not summary.ok
    assert list(summary.results) == ["a", "b", "c"]
    assert Sync("s2", "*", "auto", 1.0, ()).complete


def test_the_book_tallies_what_the_sync_itself_counts() -> None:
    book = SyncBook()
    book.add(Sync("s1", "*", "operator", 1.0, ("a", "b", "c")))
    for each in (report("a", ok=False), report("x"), report("a", finished_at=20.0)):
        book.record(each, now=50.0)
    held = book.get("s1")
    assert held is not None
    assert book.tally("s1") == held.tally()


def test_the_book_keeps_answers_as_they_came_on_the_wire() -> None:
    book = SyncBook()
    book.add(Sync("s1", "*", "operator", 1.0, ("a", "b")))
    sent = report("a", ok=False)
    book.record(sent, now=50.0, payload=wire.payload(sent))
    book.record(report("b"), now=50.0)  # no payload at hand: the book encodes the report
    held = book.get("s1")
    assert held is not None
    assert held.results == {"a": sent, "b": report("b")}
    assert book.failing(60.0, window_s=100.0, is_up=lambda host: host == "a")
    assert not book.failing(60.0, window_s=100.0, is_up=lambda host: host == "b")


def test_a_later_report_replaces_an_earlier_one_for_the_same_sync() -> None:
    sync = Sync("s1", "*", "operator", 1.0, ("a",))
    sync = sync.with_report(report("a", finished_at=10.0, ok=False))
    later = sync.with_report(report("a", finished_at=20.0, ok=True))
    assert later is not sync
    assert later.with_report(report("a", finished_at=15.0, ok=False)) is later
    assert later.ok


def test_waiters_are_released_on_completion_or_deadline() -> None:
    book = SyncBook()
    book.add(Sync("s1", "*", "operator", 1.0, ("a",)))
    book.add(Sync("s2", "*", "operator", 1.0, ("b",)))
    book.wait(Waiter("s1", "q1", (b"id1",), deadline=50.0))
    book.wait(Waiter("s2", "q2", (b"id2",), deadline=60.0))
    assert book.next_deadline() == 50.0
    assert book.release(10.0) == []
    book.record(report("a", "s1"), now=50.0)
    assert [w.request_id for w in book.release(10.0)] == ["q1"]
    assert book.release(59.0) == []
    assert [w.request_id for w in book.release(60.0)] == ["q2"]
    assert book.next_deadline() is None


def test_reports_for_syncs_not_held_are_left_to_the_database() -> None:
    book = SyncBook()
    assert book.record(report("a", "unknown"), now=50.0) is None


def test_the_book_forgets_old_syncs_but_not_while_someone_waits() -> None:
    book = SyncBook(capacity=2)
    book.add(Sync("s1", "*", "operator", 1.0, ("a",)))
    book.wait(Waiter("s1", "q1", (b"id",), deadline=99.0))
    book.add(Sync("s2", "*", "operator", 2.0, ("a",)))
    book.add(Sync("s3", "*", "operator", 3.0, ("a",)))
    assert book.get("s1") is not None
    book.release_all()
    book.add(Sync("s4", "*", "operator", 4.0, ("a",)))
    assert book.get("s1") is None
    assert [sync.sync_id for sync in book] == ["s3", "s4"]


def test_the_book_holds_a_bounded_number_of_reports_but_always_the_newest_sync() -> None:
    book = SyncBook(capacity=64, max_results=4)
    hosts = ("a", "b", "c")
    for index in range(3):
        book.add(Sync(f"s{index}", "*", "auto", float(index), hosts))
        for host in hosts:
            book.record(report(host, f"s{index}"), now=50.0)
    # Three results each: s0 went when s2 came (six held before it).
    assert [r.sync_id for r in book] == ["s1", "s2"]
    book.wait(Waiter("s1", "q1", (b"id",), deadline=99.0))
    book.add(Sync("s3", "*", "auto", 3.0, hosts))
    assert [r.sync_id for r in book] == ["s1", "s2", "s3"]  # someone waits on s1
    book.release_all()
    book.add(Sync("s4", "*", "auto", 4.0, hosts))
    assert [r.sync_id for r in book] == ["s2", "s3", "s4"]
    # However many results it holds, the sync just added stays (one loaded from the database).
    loaded = Sync("loaded", "*", "auto", 5.0, hosts)
    for host in hosts:
        loaded = loaded.with_report(report(host, "loaded"))
    small = SyncBook(capacity=64, max_results=1)
    small.add(loaded)
    assert [r.sync_id for r in small] == ["loaded"]


def test_unfinished_syncs_are_recent_and_incomplete_and_bounded() -> None:
    book = SyncBook()
    for index in range(5):
        book.add(Sync(f"s{index}", "*", "operator", 100.0 + index, ("a",)))
    book.add(Sync("old", "*", "operator", 1.0, ("a",)))
    book.add(Sync("done", "*", "operator", 104.0, ()))
    book.record(report("a", "s4"), now=50.0)

    def up(host: str) -> bool:
        return True

    recent = book.unfinished(now=110.0, window_s=60.0, limit=3, is_up=up)
    assert [r.sync_id for r in recent] == ["s1", "s2", "s3"]
    assert book.unfinished(now=110.0, window_s=60.0, limit=0, is_up=up) == []
    # Waiting only on hosts that are down: a republish would reach nobody.
    assert book.unfinished(now=110.0, window_s=60.0, limit=3, is_up=lambda h: False) == []


def test_a_retried_request_finds_its_sync() -> None:
    book = SyncBook()
    book.add(Sync("s1", "*", "operator", 1.0, (), request_id="q1"))
    assert book.by_request("q1") == "s1"
    assert book.by_request("q2") is None


def test_a_restarted_master_holds_the_answers_and_leaves_the_reports_to_the_database() -> None:
    book = SyncBook()
    before = Sync("s1", "*", "operator", 1.0, ("a", "b", "c"), deadline=10.0)
    book.add(before, {"a": Answered(False, 2.0), "x": Answered(True, 3.0)})
    assert book.get("s1") is None  # its reports are the database's to give
    assert book.tally("s1") == Tally(3, 1, 1, 0)
    assert book.failing(5.0, window_s=100.0, is_up=lambda host: True)
    up = book.unfinished(5.0, window_s=100.0, limit=5, is_up=lambda host: True)
    assert [sync.sync_id for sync in up] == ["s1"]
    # Answers still come, and the last one it waited for closes it.
    book.record(report("b", "s1", finished_at=6.0), now=6.0)
    filed = book.record(report("c", "s1", finished_at=7.0), now=7.0)
    assert filed is not None
    assert filed.completed
    assert filed.after == Tally(3, 3, 1, 0)
    assert book.get("s1") is None


def test_the_book_lets_go_of_closed_syncs_reports_but_the_newest() -> None:
    book = SyncBook()
    book.add(Sync("s1", "*", "operator", 1.0, ("a",)))
    book.record(report("a", "s1"), now=2.0)  # s1 complete, and the newest: its operator asks next
    assert book.get("s1") is not None
    book.add(Sync("s2", "*", "operator", 3.0, ("a", "b"), deadline=10.0))
    assert book.get("s1") is None  # the database has it
    assert book.tally("s1") == Tally(1, 1, 0, 0)
    book.add(Sync("s3", "*", "operator", 4.0, ("a",)))
    book.record(report("a", "s2", ok=False), now=5.0)
    book.record(report("a", "s3"), now=5.0)
    # s2 is still open: its reports stay however many syncs come after it.
    assert book.get("s2").results["a"] == report("a", "s2", ok=False)  # type: ignore[union-attr]
    (closed,) = book.close_due(10.0, {}.get)
    assert closed.results == {"a": report("a", "s2", ok=False)}
    assert book.get("s2") is None
    assert book.get("s3") is not None
    # What the republish rules read stays: s2's failed answer, and b's silence.
    assert book.failing(11.0, window_s=100.0, is_up=lambda host: True)
    assert book.tally("s2") == Tally(2, 1, 1, 1)
    # A late answer is counted, and its report left to the database too.
    filed = book.record(report("b", "s2", finished_at=20.0), now=21.0)
    assert filed is not None
    assert filed.after == Tally(2, 2, 1, 1)
    assert book.get("s2") is None
    # Adding a sync held already changes nothing (an operator asking for it again).
    book.add(Sync("s2", "*", "operator", 3.0, ("a", "b")))
    assert [sync.sync_id for sync in book] == ["s1", "s2", "s3"]
    assert book.get("s3") is not None


# -- every sync ends --------------------------------------------------------------------------


def test_a_sync_closes_complete_with_the_last_answer_it_waited_for() -> None:
    book = SyncBook()
    book.add(Sync("s1", "*", "operator", 1.0, ("a", "b"), deadline=100.0))
    book.record(report("a"), now=5.0)
    assert book.get("s1").state == "running"  # type: ignore[union-attr]
    filed = book.record(report("b"), now=6.0)
    assert filed is not None
    assert filed.completed
    done = book.get("s1")
    assert done is not None
    assert (done.state, done.closed_at, dict(done.silent)) == ("complete", 6.0, {})
    assert book.close_due(200.0, lambda host: None) == []
    # A sync that expects nobody is complete from the start.
    book.add(Sync("s2", "*", "auto", 7.0, ()))
    assert book.get("s2").state == "complete"  # type: ignore[union-attr]


def test_a_sync_closes_incomplete_at_its_deadline_naming_the_silent_hosts() -> None:
    book = SyncBook()
    book.add(Sync("s1", "*", "operator", 1.0, ("a", "b", "c"), deadline=10.0))
    book.record(report("a"), now=2.0)
    book.wait(Waiter("s1", "q1", (b"id",), deadline=1e9))
    down = {"b": 4.0}
    assert book.close_due(9.9, down.get) == []
    assert book.release(0.0) == []
    (closed,) = book.close_due(10.0, down.get)
    assert (closed.sync_id, closed.state, closed.closed_at) == ("s1", "incomplete", 10.0)
    assert dict(closed.silent) == {"b": 4.0, "c": None}
    assert closed.missing == ("b", "c")
    assert not closed.complete
    # The operator waiting on it gets an answer: the sync has ended.
    assert [w.request_id for w in book.release(0.0)] == ["q1"]
    assert book.close_due(11.0, down.get) == []


def test_a_sync_closes_early_when_every_host_it_waits_for_is_down() -> None:
    book = SyncBook()
    book.add(Sync("s1", "*", "auto", 1.0, ("a", "b"), deadline=1000.0))
    book.record(report("a"), now=2.0)
    assert book.close_due(3.0, {}.get) == []  # b is up: it may still answer
    (closed,) = book.close_due(3.0, {"b": 2.5}.get)
    assert closed.state == "incomplete"
    assert dict(closed.silent) == {"b": 2.5}


def test_a_sync_held_from_the_database_closes_at_its_deadline_without_its_reports() -> None:
    """A restarted master holds an interrupted sync's answers, not their reports: closing it
    must not need them (it once raised, and the master's loop died with it)."""
    book = SyncBook()
    sync = Sync("s1", "*", "operator", 1.0, ("a", "b"), deadline=10.0)
    book.add(sync, answered={"a": (True, 2.0)})
    assert book.close_due(9.9, {}.get) == []
    (closed,) = book.close_due(10.0, {}.get)
    assert (closed.sync_id, closed.state, closed.closed_at) == ("s1", "incomplete", 10.0)
    assert dict(closed.silent) == {"b": None}
    assert closed.results == {}  # the database has a's report
    assert book.tally("s1") == Tally(2, 1, 0, 1)
    assert book.get("s1") is None


def test_a_late_answer_is_recorded_and_shown_late_without_reopening_the_sync() -> None:
    book = SyncBook()
    book.add(Sync("s1", "*", "operator", 1.0, ("a", "b"), deadline=5.0))
    book.record(report("a"), now=2.0)
    book.close_due(5.0, {}.get)
    filed = book.record(report("b", finished_at=20.0), now=21.0)
    assert filed is not None
    assert not filed.completed
    late = book.get("s1")
    assert late is not None
    assert late.results["b"].ok
    assert late.late == ("b",)
    assert (late.state, late.closed_at) == ("incomplete", 5.0)
    assert late.tally().answered == 2


def test_a_host_is_down_since_its_heartbeats_became_overdue() -> None:
    fleet = Fleet(down_after_s=10)
    fleet.heard(heartbeat("web-1"), now=100.0)
    assert fleet.down_since("web-1", 105.0) is None
    assert fleet.down_since("web-1", 111.0) == 110.0
    fleet.cut_off("web-1")
    assert fleet.down_since("web-1", 101.0) == 100.0
    assert fleet.down_since("never-seen", 50.0) == 50.0


def test_a_restarted_master_judges_no_host_down_before_it_has_listened_long_enough() -> None:
    """Hosts from the database were last seen before the master stopped; a sync they had
    answered meanwhile must not close as 'hosts down' before they could reconnect and
    re-send. Once it has listened for down_after_s, a silent host is down since it really
    became overdue."""
    kept = Fleet(down_after_s=10)
    kept.heard(heartbeat("web-1"), now=100.0)
    restarted = Fleet(down_after_s=10, hosts=kept.take_dirty(), listening_since=200.0)
    assert restarted.down_since("web-1", 205.0) is None
    assert restarted.down_since("never-seen", 205.0) is None
    assert restarted.down_since("web-1", 210.5) == 110.0
    assert restarted.down_since("never-seen", 210.5) == 210.5
    book = SyncBook()
    book.add(Sync("s1", "*", "operator", 95.0, ("web-1",), deadline=1000.0))
    assert book.close_due(201.0, lambda host: restarted.down_since(host, 201.0)) == []
    restarted.reported(report("web-1"), now=203.0)
    filed = book.record(report("web-1"), now=203.0)
    assert filed is not None
    assert filed.completed  # completed by the re-sent report, not closed as incomplete
