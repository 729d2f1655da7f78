"""A refresh round: every refreshable watcher asked once, its end by answers or by timeout."""

from __future__ import annotations

import pytest

from master.refresh import REFRESH, RefreshRound
from master.scheduler import Scheduler


@pytest.fixture
def timers() -> Scheduler:
    timers = Scheduler()
    timers.add(REFRESH, lambda _now: None)
    return timers


def test_a_round_asks_each_watcher_once_and_ends_with_the_last_answer(
    timers: Scheduler,
) -> None:
    asked: list[str] = []
    round_ = RefreshRound(
        {"registry": lambda: asked.append("registry"), "store": lambda: asked.append("store")},
        scheduler=timers,
        timeout_s=2.0,
        monotonic=lambda: 10.0,
    )
    round_.start()
    round_.start()  # under way already: nobody is asked twice
    assert asked == ["registry", "store"]
    assert timers.due(REFRESH) == 12.0
    assert not round_.fresh("store")
    assert round_.fresh("registry")
    assert not round_.under_way
    round_.end()
    assert timers.due(REFRESH) is None


def test_a_round_with_no_refreshable_watcher_is_over_at_once(timers: Scheduler) -> None:
    round_ = RefreshRound({}, scheduler=timers, timeout_s=2.0, monotonic=lambda: 0.0)
    round_.start()
    assert not round_.under_way


def test_giving_up_stops_waiting_for_the_silent_watchers(
    timers: Scheduler, caplog: pytest.LogCaptureFixture
) -> None:
    round_ = RefreshRound(
        {"registry": lambda: None}, scheduler=timers, timeout_s=2.0, monotonic=lambda: 0.0
    )
    round_.start()
    round_.give_up()
    assert not round_.under_way
    assert "no fresh read of registry within 2 s" in caplog.text
