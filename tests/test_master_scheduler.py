"""The master loop's scheduler: named timers, the next wake-up, and the order they run in."""

from __future__ import annotations

import pytest

from master.scheduler import RETRY_MAX_S, RETRY_START_S, Scheduler


def test_a_timer_runs_once_when_due_and_not_before() -> None:
    timers = Scheduler()
    ran: list[float] = []
    timers.add("beat", ran.append, due=10.0)
    timers.run_due(9.9)
    assert ran == []
    timers.run_due(10.0)
    timers.run_due(11.0)
    assert ran == [10.0]
    assert timers.due("beat") is None


def test_a_repeating_timer_sets_its_next_due_time_itself() -> None:
    timers = Scheduler()
    ran: list[float] = []

    def beat(now: float) -> None:
        ran.append(now)
        timers.at("beat", now + 5.0)

    timers.add("beat", beat, due=0.0)
    for now in (0.0, 1.0, 5.0, 9.0, 10.0):
        timers.run_due(now)
    assert ran == [0.0, 5.0, 10.0]
    assert timers.next_due() == 15.0


def test_no_later_than_only_ever_brings_a_timer_forward() -> None:
    timers = Scheduler()
    timers.add("view", lambda _now: None)
    timers.no_later_than("view", 3.0)
    timers.no_later_than("view", 5.0)
    assert timers.due("view") == 3.0
    timers.no_later_than("view", 1.0)
    assert timers.due("view") == 1.0
    timers.cancel("view")
    assert timers.next_due() is None


def test_due_timers_run_in_the_order_they_were_added_and_see_each_others_changes() -> None:
    """A timer cancelled by one that runs before it in the same pass does not run."""
    timers = Scheduler()
    ran: list[str] = []

    def republish(_now: float) -> None:
        ran.append("republish")
        timers.cancel("catch-up")

    timers.add("rebuild", lambda _now: ran.append("rebuild"), due=2.0)
    timers.add("republish", republish, due=1.0)
    timers.add("catch-up", lambda _now: ran.append("catch-up"), due=0.5)
    timers.add("view", lambda _now: ran.append("view"), due=0.0)
    timers.run_due(2.0)
    assert ran == ["rebuild", "republish", "view"]


def test_a_timer_that_does_not_wake_the_loop_still_runs_when_it_is_awake() -> None:
    timers = Scheduler()
    open_syncs: list[str] = []
    ran: list[float] = []
    timers.add("close-check", ran.append, due=1.0, wakes=lambda: bool(open_syncs))
    timers.add("republish", lambda _now: None, due=30.0)
    assert timers.next_due() == 30.0
    open_syncs.append("s1")
    assert timers.next_due() == 1.0
    open_syncs.clear()
    timers.run_due(2.0)
    assert ran == [2.0]


def test_names_are_unique_and_known() -> None:
    timers = Scheduler()
    timers.add("prune", lambda _now: None)
    with pytest.raises(ValueError, match="prune"):
        timers.add("prune", lambda _now: None)
    with pytest.raises(KeyError):
        timers.at("prnue", 1.0)


def test_a_failing_timer_is_logged_and_tried_again_after_a_growing_pause(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The other timers of the pass still run; one success resets the pause."""
    failed: list[str] = []
    timers = Scheduler(failed=failed.append)
    outcomes = [False, False, True, False]
    ran: list[str] = []

    def flaky(_now: float) -> None:
        if not outcomes.pop(0):
            raise OSError("database or disk is full")

    timers.add("flush", flaky, due=0.0)
    timers.add("view", lambda _now: ran.append("view"), due=0.0)
    timers.run_due(0.0)
    assert ran == ["view"]
    assert failed == ["flush"]
    assert "the master's flush task failed (1 in a row)" in caplog.text
    assert "database or disk is full" in caplog.text  # the traceback is logged
    first = timers.due("flush")
    assert first is not None
    assert RETRY_START_S / 2 <= first <= RETRY_START_S
    timers.run_due(first)
    second = timers.due("flush")
    assert second is not None
    assert first + RETRY_START_S <= second <= first + 2 * RETRY_START_S
    timers.run_due(second)  # succeeds, and (as a one-shot timer) is not due again
    assert timers.due("flush") is None
    timers.at("flush", 100.0)
    timers.run_due(100.0)
    third = timers.due("flush")
    assert third is not None
    assert third <= 100.0 + RETRY_START_S
    assert failed == ["flush"] * 3


def test_a_failing_timer_that_set_its_next_due_time_keeps_it() -> None:
    timers = Scheduler()

    def beat(now: float) -> None:
        timers.at("beat", now + 30.0)
        raise RuntimeError("a bug")

    timers.add("beat", beat, due=0.0)
    timers.run_due(0.0)
    assert timers.due("beat") == 30.0


def test_the_retry_pause_stops_growing_at_its_cap() -> None:
    timers = Scheduler()

    def broken(_now: float) -> None:
        raise RuntimeError("a bug")

    timers.add("broken", broken, due=0.0)
    now = 0.0
    for _ in range(20):
        timers.run_due(now)
        due = timers.due("broken")
        assert due is not None
        assert due - now <= RETRY_MAX_S
        now = due
    assert now - 0.0 > RETRY_MAX_S  # it did grow to the cap
