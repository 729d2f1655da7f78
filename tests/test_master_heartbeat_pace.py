"""The heartbeat pace: a fleet's heartbeats held to the master's budget, and down_after_s
kept in step with what every minion may still be doing."""

from __future__ import annotations

from dataclasses import dataclass

from daybook.model.messages import Heartbeat
from master.heartbeat_pace import PACE_SETTLE, HeartbeatPace
from master.ledger import Fleet
from master.scheduler import Scheduler

INTERVAL_S = 5.0
DOWN_AFTER_S = 15.0
SETTLE_S = 60.0


@dataclass
class Hosts:
    """A fleet of `count` hosts, which may shrink (the ledger's never does in one life)."""

    count: int
    down_after_s: float = DOWN_AFTER_S

    def __len__(self) -> int:
        return self.count


def pace_for(fleet: Hosts | Fleet, max_per_s: float = 500.0) -> tuple[HeartbeatPace, Scheduler]:
    timers = Scheduler()
    pace = HeartbeatPace(
        fleet, timers, interval_s=INTERVAL_S, max_per_s=max_per_s, settle_s=SETTLE_S
    )
    timers.add(PACE_SETTLE, pace.settle)
    return pace, timers


def test_a_fleet_within_the_budget_keeps_the_configured_pace() -> None:
    fleet = Hosts(2500)
    pace, _ = pace_for(fleet)
    assert pace.advertise(0.0) == INTERVAL_S
    assert fleet.down_after_s == DOWN_AFTER_S


def test_a_fleet_within_the_budget_keeps_a_sub_second_pace_too() -> None:
    fleet = Hosts(3, down_after_s=2.0)
    timers = Scheduler()
    pace = HeartbeatPace(fleet, timers, interval_s=0.2, max_per_s=500.0, settle_s=SETTLE_S)
    assert pace.advertise(0.0) == 0.2
    assert fleet.down_after_s == 2.0


def test_a_large_fleet_is_asked_to_slow_down_in_whole_seconds() -> None:
    fleet = Hosts(8900)
    pace, _ = pace_for(fleet)
    assert pace.advertise(0.0) == 18.0  # 8,900 / 500 a second, rounded up
    # Raised with the event that asks for it: no minion is slower yet.
    assert fleet.down_after_s == DOWN_AFTER_S * 18.0 / INTERVAL_S
    assert pace_for(Hosts(10_000), max_per_s=100.0)[0].advertise(0.0) == 100.0


def test_the_ledger_is_paced_by_the_hosts_it_knows() -> None:
    fleet = Fleet(DOWN_AFTER_S)
    pace, _ = pace_for(fleet, max_per_s=2.0)
    for index in range(30):
        fleet.heard(Heartbeat(f"web-{index}", "boot", 1.0, 1.0, 0, 0, None, False), 1.0)
    assert pace.advertise(0.0) == 15.0
    assert fleet.down_after_s == 45.0
    assert fleet.is_up("web-0", 1.0 + 45.0)
    assert not fleet.is_up("web-0", 1.0 + 45.1)


def test_no_budget_keeps_every_fleet_at_the_configured_pace() -> None:
    fleet = Hosts(10_000)
    pace, _ = pace_for(fleet, max_per_s=0.0)
    assert pace.advertise(0.0) == INTERVAL_S
    assert fleet.down_after_s == DOWN_AFTER_S


def test_a_faster_pace_shows_hosts_down_sooner_only_once_every_minion_heard_it() -> None:
    fleet = Hosts(10_000)
    pace, timers = pace_for(fleet)
    pace.advertise(0.0)
    assert fleet.down_after_s == 60.0
    fleet.count = 100
    assert pace.advertise(100.0) == INTERVAL_S
    # A minion may hear the faster pace only with the second republish, and then keep the
    # heartbeat it had scheduled at the old one.
    assert fleet.down_after_s == 60.0
    assert timers.due(PACE_SETTLE) == 100.0 + SETTLE_S + 20.0
    timers.run_due(179.9)
    assert fleet.down_after_s == 60.0
    timers.run_due(180.0)
    assert fleet.down_after_s == DOWN_AFTER_S


def test_a_second_speedup_while_settling_still_counts_the_slowest_pace() -> None:
    fleet = Hosts(10_000)
    pace, timers = pace_for(fleet)
    pace.advertise(0.0)  # every 20 s
    fleet.count = 5000
    assert pace.advertise(10.0) == 10.0
    fleet.count = 100
    assert pace.advertise(20.0) == INTERVAL_S
    # Minions that never heard the 10 s pace may still be at 20 s.
    assert fleet.down_after_s == 60.0
    assert timers.due(PACE_SETTLE) == 20.0 + SETTLE_S + 20.0
    timers.run_due(99.9)
    assert fleet.down_after_s == 60.0
    timers.run_due(100.0)
    assert fleet.down_after_s == DOWN_AFTER_S
