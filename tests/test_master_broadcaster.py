"""The broadcaster's events: downloads spread over a window sized to the hosts they reach,
and heartbeats paced to the fleet."""

from __future__ import annotations

import math
from typing import Any, cast

from daybook import wire
from daybook.model.fleet import HostStatus
from daybook.model.messages import SyncEvent
from daybook.model.state import DesiredState
from daybook.model.sync import Sync
from master.broadcaster import Broadcaster
from master.heartbeat_pace import HeartbeatPace
from master.ledger import Fleet
from master.metrics import MasterMetrics
from master.publisher import Publisher
from master.scheduler import Scheduler


def sync_expecting(count: int) -> Sync:
    hosts = tuple(f"web-{index}" for index in range(count))
    return Sync(sync_id="s1", target="*", origin="auto", issued_at=1.0, expected=hosts)


def broadcaster(starts_per_s: float) -> Broadcaster:
    # Only the spread is asked of it here: nothing is published.
    unused = cast(Any, None)
    return Broadcaster(
        cast(Publisher, unused),
        epoch=1,
        metrics=cast(MasterMetrics, unused),
        monotonic=lambda: 0.0,
        download_starts_per_s=starts_per_s,
    )


def test_a_few_hosts_start_at_once_and_a_fleet_is_spread() -> None:
    sender = broadcaster(100.0)
    assert sender.spread_s(sync_expecting(3)) == 0.03
    assert sender.spread_s(sync_expecting(20)) == 0.2
    # Beyond the minions' own splay (1 s by default), each caps it at that.
    assert sender.spread_s(sync_expecting(10_000)) == 100.0
    assert broadcaster(10.0).spread_s(sync_expecting(20)) == 2.0


class RecordingPublisher:
    def __init__(self) -> None:
        self.events: list[SyncEvent] = []
        self.published = 0
        self.bytes_sent = 0

    def publish(self, event: SyncEvent) -> None:
        self.events.append(event)
        self.published += 1


def test_each_event_asks_for_the_heartbeat_pace_sized_to_the_fleet() -> None:
    fleet = Fleet(15.0, (HostStatus(f"web-{index}", True, 1.0) for index in range(1200)))
    timers = Scheduler()
    pace = HeartbeatPace(fleet, timers, interval_s=5.0, max_per_s=100.0, settle_s=60.0)
    publisher = RecordingPublisher()
    metrics = MasterMetrics()
    sender = Broadcaster(
        cast(Publisher, publisher), epoch=1, metrics=metrics, monotonic=lambda: 0.0, pace=pace
    )
    state = wire.encode_state(DesiredState({"web-*": ("web",)}, {}))
    sender.send(sync_expecting(3), state)
    (event,) = publisher.events
    assert event.heartbeat_s == 12.0
    assert fleet.down_after_s == 36.0
    assert metrics.registry.get_sample_value("daybook_heartbeat_interval_seconds") == 12.0
    # Without a pace, minions keep their own interval.
    unpaced = Broadcaster(
        cast(Publisher, publisher), epoch=1, metrics=MasterMetrics(), monotonic=lambda: 0.0
    )
    unpaced.send(sync_expecting(3), state)
    assert publisher.events[-1].heartbeat_s is None


def test_only_a_new_sync_makes_the_loop_busy() -> None:
    """A republish or a catch-up goes to a fleet that has mostly answered it: the loop keeps
    reading heartbeats in batches."""
    publisher = RecordingPublisher()
    clock = iter([10.0, 20.0, 30.0])
    sender = Broadcaster(
        cast(Publisher, publisher), epoch=1, metrics=MasterMetrics(), monotonic=lambda: next(clock)
    )
    state = wire.encode_state(DesiredState({"web-*": ("web",)}, {}))
    sender.send(sync_expecting(3), state, new=False)
    assert sender.last_sent == -math.inf
    sender.send(sync_expecting(3), state)
    assert sender.last_sent == 10.0
    sender.send(sync_expecting(3), state, new=False)
    assert sender.last_sent == 10.0
    assert len(publisher.events) == 3
