"""What the master knows about its minions and syncs: liveness, expected hosts, results.

Pure bookkeeping over dataclasses and explicit clocks, with no sockets and no database, so
every rule here (who is up, whom a sync expects, when a sync is complete, which operator
waits are over) is tested directly.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from daybook.model.patterns import HostPattern
from daybook.wire import FleetStatus, Heartbeat, HostStatus, Report, SyncSummary


@dataclass
class HostRecord:
    """One host as last heard from. Times are wall-clock seconds, as they are persisted."""

    host: str
    last_seen: float
    boot_id: str | None = None
    started_at: float | None = None
    last_report: Report | None = None


class Fleet:
    """Every host the master has heard from, up while heartbeats keep coming."""

    def __init__(self, down_after_s: float, hosts: Iterable[HostRecord] = ()) -> None:
        self.down_after_s = down_after_s
        self._hosts: dict[str, HostRecord] = {record.host: record for record in hosts}
        # Hosts changed since the database last saw them.
        self._dirty: set[str] = set()
        # Hosts whose key was deleted or rejected: down at once, until heard from again.
        self._cut_off: set[str] = set()

    def __len__(self) -> int:
        return len(self._hosts)

    def __contains__(self, host: str) -> bool:
        return host in self._hosts

    def get(self, host: str) -> HostRecord | None:
        return self._hosts.get(host)

    def heard(self, heartbeat: Heartbeat, now: float) -> bool:
        """Record a heartbeat; True when it comes from a minion process not seen before."""
        record = self._touch(heartbeat.host, now)
        restarted = record.boot_id != heartbeat.boot_id
        record.boot_id = heartbeat.boot_id
        record.started_at = heartbeat.started_at
        return restarted

    def reported(self, report: Report, now: float) -> bool:
        """Record a report; True when it is now the host's latest (an old one resent is not)."""
        record = self._touch(report.host, now)
        latest = record.last_report
        if latest is not None and latest.finished_at > report.finished_at:
            return False
        record.last_report = report
        return True

    def cut_off(self, host: str) -> None:
        """Show `host` down now, not when its heartbeats are overdue, and expect nothing of it."""
        self._cut_off.add(host)

    def _touch(self, host: str, now: float) -> HostRecord:
        self._cut_off.discard(host)
        record = self._hosts.get(host)
        if record is None:
            record = self._hosts[host] = HostRecord(host=host, last_seen=now)
        record.last_seen = max(record.last_seen, now)
        self._dirty.add(host)
        return record

    def is_up(self, host: str, now: float) -> bool:
        if host in self._cut_off:
            return False
        record = self._hosts.get(host)
        return record is not None and now - record.last_seen <= self.down_after_s

    def live_hosts(self, now: float) -> list[str]:
        return sorted(host for host in self._hosts if self.is_up(host, now))

    def expected_for(self, target: str, now: float) -> tuple[str, ...]:
        """The live hosts a sync of `target` waits for."""
        pattern = HostPattern(target)
        return tuple(host for host in self.live_hosts(now) if pattern.matches(host))

    def take_dirty(self) -> list[HostRecord]:
        dirty = [self._hosts[host] for host in sorted(self._dirty)]
        self._dirty.clear()
        return dirty

    def status(self, epoch: int, now: float) -> FleetStatus:
        # `is_up` inlined: this runs over every host for each snapshot of a large fleet.
        cut_off = self._cut_off
        seen_since = now - self.down_after_s
        return FleetStatus(
            epoch=epoch,
            now=now,
            hosts={
                host: HostStatus(
                    host=host,
                    up=host not in cut_off and record.last_seen >= seen_since,
                    last_seen=record.last_seen,
                    boot_id=record.boot_id,
                    started_at=record.started_at,
                    last_report=record.last_report,
                )
                for host, record in sorted(self._hosts.items())
            },
        )


@dataclass
class SyncRecord:
    """One sync: its target, the hosts it expects, and the latest report of each host."""

    sync_id: str
    target: str
    origin: str
    issued_at: float
    expected: tuple[str, ...]
    results: dict[str, Report] = field(default_factory=dict)
    # The operator request that started it, so a retried request does not start another.
    request_id: str | None = None

    @property
    def complete(self) -> bool:
        return all(host in self.results for host in self.expected)

    def add(self, report: Report) -> bool:
        """Keep the host's latest report; True if it changed the record."""
        current = self.results.get(report.host)
        if current is not None and current.finished_at > report.finished_at:
            return False
        self.results[report.host] = report
        return True

    def summary(self) -> SyncSummary:
        return SyncSummary(
            sync_id=self.sync_id,
            target=self.target,
            origin=self.origin,
            issued_at=self.issued_at,
            expected=self.expected,
            results=dict(sorted(self.results.items())),
        )


@dataclass(frozen=True)
class Waiter:
    """An operator waiting for a sync to complete. `route` is opaque to this module."""

    sync_id: str
    request_id: str
    route: tuple[bytes, ...]
    deadline: float


class SyncBook:
    """The recent syncs held in memory, and the operators waiting on them.

    The database holds every sync; this keeps the most recent `capacity` at hand, because
    those are the ones reports arrive for, operators wait on, and republishes repeat.
    """

    def __init__(self, capacity: int = 64, max_results: int = 10_000) -> None:
        self._capacity = capacity
        # Every sync holds a report per host (a kilobyte or two each): in a large fleet,
        # older syncs go sooner, so that memory does not grow with the fleet times 64.
        self._max_results = max_results
        self._syncs: OrderedDict[str, SyncRecord] = OrderedDict()
        self._waiters: list[Waiter] = []

    def __iter__(self) -> Iterator[SyncRecord]:
        return iter(self._syncs.values())

    def __len__(self) -> int:
        return len(self._syncs)

    def add(self, record: SyncRecord) -> None:
        self._syncs[record.sync_id] = record
        self._syncs.move_to_end(record.sync_id)
        results = sum(len(held.results) for held in self._syncs.values())
        # The newest sync always stays, however many results it holds.
        while len(self._syncs) > self._capacity or (
            results > self._max_results and len(self._syncs) > 1
        ):
            oldest = next(iter(self._syncs))
            if any(w.sync_id == oldest for w in self._waiters):
                break  # someone still waits on it; it goes once they are answered
            results -= len(self._syncs.pop(oldest).results)

    def get(self, sync_id: str) -> SyncRecord | None:
        return self._syncs.get(sync_id)

    def by_request(self, request_id: str) -> SyncRecord | None:
        for record in self._syncs.values():
            if record.request_id == request_id:
                return record
        return None

    def record(self, report: Report) -> SyncRecord | None:
        """File a report under its sync, if that sync is held here."""
        record = self._syncs.get(report.sync_id)
        if record is not None:
            record.add(report)
        return record

    def unfinished(
        self, now: float, window_s: float, limit: int, is_up: Callable[[str], bool]
    ) -> list[SyncRecord]:
        """Syncs issued within `window_s` still waiting for a host that is up (a republish
        can reach it), newest last, at most `limit`."""
        recent = [
            record
            for record in self._syncs.values()
            if now - record.issued_at <= window_s
            and any(host not in record.results and is_up(host) for host in record.expected)
        ]
        return recent[-limit:] if limit > 0 else []

    # -- operators waiting ---------------------------------------------------------------------

    def wait(self, waiter: Waiter) -> None:
        self._waiters.append(waiter)

    @property
    def waiters(self) -> tuple[Waiter, ...]:
        return tuple(self._waiters)

    def next_deadline(self) -> float | None:
        return min((w.deadline for w in self._waiters), default=None)

    def release(self, monotonic_now: float) -> list[Waiter]:
        """Remove and return the waiters whose sync is complete or whose deadline passed."""
        done: list[Waiter] = []
        keep: list[Waiter] = []
        for waiter in self._waiters:
            record = self._syncs.get(waiter.sync_id)
            finished = record is None or record.complete
            (done if finished or waiter.deadline <= monotonic_now else keep).append(waiter)
        self._waiters = keep
        return done

    def release_all(self) -> list[Waiter]:
        done, self._waiters = self._waiters, []
        return done
