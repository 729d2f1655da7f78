"""The heartbeat pace: how often the master asks its minions to heartbeat, sized to the fleet.

Every heartbeat costs the master a CURVE decryption on its I/O thread and a little of its
loop, so a fleet heartbeating every `heartbeat_interval_s` costs it in proportion to its
size: 2,000 a second for 10,000 minions at 5 s. As Nomad's servers do for their clients
(`max_heartbeats_per_second`), the master holds the whole fleet to `max_per_s` heartbeats a
second: each event asks for an interval of known minions / `max_per_s` seconds, in whole
seconds and never under the configured one, and a host is shown down after
`down_after_s` scaled by the same factor. A small fleet keeps the configured pace.

Pure logic over an explicit monotonic clock: the broadcaster asks `advertise` for each
event, and a faster pace sets the loop's `PACE_SETTLE` timer for when the fleet's
`down_after_s` may follow it.
"""

from __future__ import annotations

import math
from typing import Protocol

from master.scheduler import Scheduler

# The timer that lowers `down_after_s` once every minion has heard a faster pace.
PACE_SETTLE = "pace-settle"


class PacedFleet(Protocol):
    """What the pace needs of the fleet (master.ledger.Fleet): how many hosts it knows, and
    the silence after which it shows one down."""

    down_after_s: float

    def __len__(self) -> int: ...


class HeartbeatPace:
    """The interval the events ask for, and the fleet's `down_after_s` that goes with it.

    A slower pace raises `down_after_s` at once, before any minion has slowed down. A faster
    one lowers it only once every minion has had time to hear it: within `settle_s` (an
    event reaches every live minion at the latest with the next republish) plus one
    interval of the old pace, the heartbeat each minion had already scheduled.
    """

    def __init__(
        self,
        fleet: PacedFleet,
        scheduler: Scheduler,
        *,
        interval_s: float,
        max_per_s: float,
        settle_s: float,
    ) -> None:
        self._fleet = fleet
        self._scheduler = scheduler
        self._base_interval_s = interval_s
        self._base_down_after_s = fleet.down_after_s
        self._max_per_s = max_per_s
        self._settle_s = settle_s
        self.interval_s = interval_s
        # A slower pace asked for before, which still counts until `_slower_until`.
        self._slower_s = interval_s
        self._slower_until = -math.inf

    def interval_for(self, minions: int) -> float:
        """The interval that holds `minions` to `max_per_s` heartbeats a second (0: no cap)."""
        needed_s = minions / self._max_per_s if self._max_per_s > 0 else 0.0
        if needed_s <= self._base_interval_s:
            return self._base_interval_s
        return float(math.ceil(needed_s))

    def advertise(self, mono: float) -> float:
        """The interval an event published now asks for, sized to the hosts known now."""
        wanted = self.interval_for(len(self._fleet))
        if wanted < self.interval_s:
            still_slower = self._slower_s if mono < self._slower_until else self.interval_s
            self._slower_s = max(still_slower, self.interval_s)
            self._slower_until = mono + self._settle_s + self._slower_s
            self._scheduler.at(PACE_SETTLE, self._slower_until)
        self.interval_s = wanted
        self.settle(mono)
        return wanted

    def settle(self, mono: float) -> None:
        """Set the fleet's `down_after_s` for the slowest pace a minion may still keep (the
        `PACE_SETTLE` timer's callback)."""
        slowest = self.interval_s
        if mono < self._slower_until:
            slowest = max(slowest, self._slower_s)
        self._fleet.down_after_s = self._base_down_after_s * slowest / self._base_interval_s
