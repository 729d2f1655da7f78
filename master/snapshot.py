"""The fleet as the master loop last published it, for readers on other threads.

The loop owns the sockets, the database handle and every mutable record. The HTTP API and
the metrics read only these frozen snapshots, handed over by a single reference assignment,
so they never lock against the loop nor see a half-made change.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property

from daybook.model.fleet import HostStatus
from daybook.model.leadership import MasterView, Term
from daybook.model.mappings import MappingTable
from daybook.model.patterns import Candidate, PatternTable
from daybook.model.pins import Pin
from daybook.model.rollout import Rollout


@dataclass(frozen=True)
class FleetSnapshot:
    """Every known host, the mappings and the store's versions, at `taken_at` (wall clock).

    `mappings` and `sizes` are None until the watchers have first read the registry and
    listed the store. Readers judge liveness with `is_up` at their own clock: a host up
    when the snapshot was taken goes down once its heartbeats are overdue, with no new
    snapshot needed (one comes with every heartbeat that brings it back).
    """

    epoch: int
    taken_at: float
    down_after_s: float
    hosts: Mapping[str, HostStatus]
    mappings: MappingTable | None = None
    # By service: the pins read with the mappings.
    pins: Mapping[str, Pin] | None = None
    # Per service, each version in the store with its archive size in bytes.
    sizes: Mapping[str, Mapping[str, int]] | None = None
    state_digest: str | None = None
    state_sync_id: str | None = None
    # The rolling syncs the master keeps at hand, oldest first.
    rollouts: tuple[Rollout, ...] = ()
    # Whether this master leads; who does (None: unknown, or outside leader election); and
    # the masters it knows, itself first.
    leading: bool = True
    leader: Term | None = None
    masters: tuple[MasterView, ...] = ()

    def is_up(self, status: HostStatus, now: float) -> bool:
        # `status.up` carries what only the loop knows, such as a key cut off just now.
        return status.up and now - status.last_seen <= self.down_after_s

    def count_up(self, now: float) -> tuple[int, int]:
        """How many known hosts are up and how many down at `now`."""
        up = sum(1 for status in self.hosts.values() if self.is_up(status, now))
        return up, len(self.hosts) - up

    @cached_property
    def winners(self) -> Mapping[str, Candidate | None]:
        """Each known host's winning pattern under the current mappings (None: no match).

        Computed once per snapshot, on first use; two threads racing here compute the same
        value, so the missing lock costs at most a repeated computation.
        """
        table = PatternTable(self.mappings or {})
        return {host: table.best_match(host) for host in self.hosts}


class SnapshotBox:
    """Holds the latest snapshot: the loop publishes, any thread reads."""

    def __init__(self, initial: FleetSnapshot) -> None:
        self._current = initial
        self.published = 0

    @property
    def current(self) -> FleetSnapshot:
        return self._current

    def publish(self, snapshot: FleetSnapshot) -> None:
        self._current = snapshot
        self.published += 1
