"""The broadcaster's events: downloads spread over a window sized to the hosts they reach."""

from __future__ import annotations

from typing import Any, cast

from daybook.model.sync import Sync
from master.broadcaster import Broadcaster
from master.metrics import MasterMetrics
from master.publisher import Publisher


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
