"""The view publisher: when the loop hands the HTTP thread a new snapshot of the fleet."""

from __future__ import annotations

import math
from collections.abc import Callable

from master.ledger import Fleet
from master.scheduler import Scheduler
from master.served import Served
from master.snapshot import FleetSnapshot, SnapshotBox
from master.standing import Standing
from master.tuning import MasterTuning

# The timer that publishes the next snapshot.
VIEW = "view"


class ViewPublisher:
    """Publishes a snapshot soon after each change, but never more often than the tuning
    allows, nor so often that copying a large fleet takes over the loop."""

    def __init__(
        self,
        *,
        epoch: int,
        fleet: Fleet,
        served: Served,
        scheduler: Scheduler,
        tuning: MasterTuning,
        clock: Callable[[], float],
        monotonic: Callable[[], float],
        snapshots: SnapshotBox | None = None,
        standing: Standing | None = None,
    ) -> None:
        self._epoch = epoch
        self._standing = standing or Standing()
        self._fleet = fleet
        self._served = served
        self._scheduler = scheduler
        self._tuning = tuning
        self._clock = clock
        self._monotonic = monotonic
        self.snapshots = snapshots or SnapshotBox(self._snapshot())
        self._gap_s = tuning.view_interval_s
        self._last = -math.inf

    def changed(self, *, lazy: bool = False) -> None:
        """Publish a new snapshot soon; `lazy` when only last-seen times moved."""
        gap = self._gap_s
        if lazy:
            lazy_gap = min(self._tuning.heartbeat_view_interval_s, self._fleet.down_after_s / 4)
            gap = max(gap, lazy_gap)
        self._scheduler.no_later_than(VIEW, max(self._monotonic(), self._last + gap))

    def publish(self, _now: float | None = None) -> None:
        started = self._monotonic()
        self.snapshots.publish(self._snapshot())
        self._last = finished = self._monotonic()
        self._scheduler.cancel(VIEW)
        # Copying a large fleet takes a while: keep that under a tenth of the loop's time.
        self._gap_s = max(self._tuning.view_interval_s, 10 * (finished - started))

    def _snapshot(self) -> FleetSnapshot:
        now = self._clock()
        served = self._served
        return FleetSnapshot(
            epoch=self._epoch,
            taken_at=now,
            down_after_s=self._fleet.down_after_s,
            hosts=self._fleet.status(self._epoch, now).hosts,
            mappings=served.mappings,
            pins=served.pins,
            sizes=served.sizes,
            state_digest=served.state.digest if served.state else None,
            state_sync_id=served.sync.sync_id if served.sync else None,
            rollouts=served.rollouts,
            leading=self._standing.leading,
            leader=self._standing.leader,
            masters=self._standing.masters(),
        )
