"""The master loop's scheduler: named timers, the next wake-up, and the order they run in."""

from __future__ import annotations

import pytest

from master.scheduler import Scheduler


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
