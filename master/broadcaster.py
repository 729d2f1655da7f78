"""The broadcaster: numbers the master's sync events and sends them through the publisher."""

from __future__ import annotations

import math
from collections.abc import Callable

from daybook.model.messages import MAX_SPREAD_S, SyncEvent
from daybook.model.state import EncodedState
from daybook.model.sync import Sync
from master.heartbeat_pace import HeartbeatPace
from master.metrics import MasterMetrics
from master.publisher import Publisher
from master.standing import Standing


class Broadcaster:
    """Sends a sync with the state it carries, as the next event of this master's epoch.

    Minions tell a missed event by a gap in `seq` and a restarted master by a new `epoch`.
    `last_sent` (of the last new sync) tells the loop it is busy: answers are read as they
    come for a while after.
    Only a leading master sends, each event with its term; a standby's sends go nowhere.
    """

    def __init__(
        self,
        publisher: Publisher,
        *,
        epoch: int,
        metrics: MasterMetrics,
        monotonic: Callable[[], float],
        download_starts_per_s: float = 100.0,
        standing: Standing | None = None,
        pace: HeartbeatPace | None = None,
    ) -> None:
        self.standing = standing or Standing()
        # Without one, events leave minions at their own heartbeat interval.
        self._pace = pace
        self._publisher = publisher
        self._download_starts_per_s = download_starts_per_s
        self.epoch = epoch
        self.seq = 0
        self._metrics = metrics
        self._monotonic = monotonic
        self.last_sent = -math.inf

    def send(self, sync: Sync, state: EncodedState, *, new: bool = True) -> None:
        """Publish `sync` carrying `state`. A `new` sync makes the loop busy: its answers are
        read as they come for a while. A republish or a catch-up is not new: most of the
        fleet has answered it already, and with 10,000 minions, reading every heartbeat as
        it comes for a while after each periodic republish was a sixth of the master's
        idle time spent waking once a heartbeat."""
        if not self.standing.leading:
            return
        self.seq += 1
        event = SyncEvent.carrying(
            state,
            epoch=self.epoch,
            seq=self.seq,
            sync_id=sync.sync_id,
            target=sync.target,
            issued_at=sync.issued_at,
            spread_s=self.spread_s(sync),
            hosts=sync.hosts,
            term=self.standing.number,
            heartbeat_s=self._heartbeat_s(),
        )
        self._publisher.publish(event)
        if new:
            self.last_sent = self._monotonic()
        metrics, publisher = self._metrics, self._publisher
        metrics.add_total(metrics.published_events, "published_events", publisher.published)
        metrics.add_total(metrics.published_bytes, "published_bytes", publisher.bytes_sent)

    def _heartbeat_s(self) -> float | None:
        """The heartbeat interval an event sent now asks for (None: a minion's own)."""
        if self._pace is None:
            return None
        interval_s = self._pace.advertise(self._monotonic())
        self._metrics.heartbeat_interval.set(interval_s)
        return interval_s

    def spread_s(self, sync: Sync) -> float:
        """The window the hosts a sync expects should spread their download starts over:
        S3 takes a few hundred new requests a second at once, and a fleet far more spread."""
        return min(round(len(sync.expected) / self._download_starts_per_s, 3), MAX_SPREAD_S)

    def drop_subscribers(self) -> None:
        """Disconnect every subscriber, so each must pass the key check again."""
        self._publisher.drop_subscribers()
