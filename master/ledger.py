"""The master's ledger: what it knows about its minions and syncs — liveness, the hosts each
sync expects, the answers so far, and the operators waiting for them.

Pure bookkeeping over the model's types and explicit clocks, with no sockets and no
database, so every rule here (who is up, whom a sync expects, when a sync is complete,
which operator waits are over) is tested directly. A sync's answers are kept as their
wire payloads, a quarter of their decoded size, and only while someone may ask for them
soon: the open syncs and the newest. The database has every one.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, replace

from daybook import wire
from daybook.model.fleet import FleetStatus, HostStatus
from daybook.model.messages import Heartbeat
from daybook.model.patterns import HostPattern
from daybook.model.results import Report
from daybook.model.sync import COMPLETE, Answered, Sync, Tally, is_newer


class Fleet:
    """Every host the master has heard from, up while heartbeats keep coming.

    Each host's status is kept as the model's `HostStatus`, with `up` False only while its
    key is cut off; whether its heartbeats are overdue is judged at the clock of whoever
    asks (`is_up`, `status`). Times are wall-clock seconds, as they are persisted.
    """

    def __init__(
        self,
        down_after_s: float,
        hosts: Iterable[HostStatus] = (),
        *,
        listening_since: float = -math.inf,
    ) -> None:
        self.down_after_s = down_after_s
        self._hosts: dict[str, HostStatus] = {status.host: status for status in hosts}
        # Silence says a host is down only once the master has listened for a whole
        # down_after_s: a restarted one, whose hosts come from the database, would otherwise
        # find every minion overdue before any could reconnect and re-send its report.
        self._silence_counts_from = listening_since + down_after_s
        # Hosts changed since the database last saw them.
        self._dirty: set[str] = set()

    def __len__(self) -> int:
        return len(self._hosts)

    def __contains__(self, host: str) -> bool:
        return host in self._hosts

    def get(self, host: str) -> HostStatus | None:
        return self._hosts.get(host)

    def heard(self, heartbeat: Heartbeat, now: float) -> bool:
        """Record a heartbeat; True when it comes from a minion process not seen before."""
        known = self._hosts.get(heartbeat.host)
        restarted = known is None or known.boot_id != heartbeat.boot_id
        self._touch(
            heartbeat.host,
            now,
            boot_id=heartbeat.boot_id,
            started_at=heartbeat.started_at,
            last_report=known.last_report if known else None,
        )
        return restarted

    def reported(self, report: Report, now: float) -> bool:
        """Record a report; True when it is now the host's latest (an old one resent is not)."""
        known = self._hosts.get(report.host)
        latest = known.last_report if known else None
        newer = is_newer(report, latest)
        self._touch(
            report.host,
            now,
            boot_id=known.boot_id if known else None,
            started_at=known.started_at if known else None,
            last_report=report if newer else latest,
        )
        return newer

    def cut_off(self, host: str) -> None:
        """Show `host` down now, not when its heartbeats are overdue, and expect nothing of it."""
        known = self._hosts.get(host)
        if known is not None and known.up:
            self._hosts[host] = HostStatus(
                host, False, known.last_seen, known.boot_id, known.started_at, known.last_report
            )

    def _touch(
        self,
        host: str,
        now: float,
        *,
        boot_id: str | None,
        started_at: float | None,
        last_report: Report | None,
    ) -> None:
        known = self._hosts.get(host)
        last_seen = max(known.last_seen, now) if known else now
        # Built positionally: this runs for every heartbeat of a large fleet.
        self._hosts[host] = HostStatus(host, True, last_seen, boot_id, started_at, last_report)
        self._dirty.add(host)

    def is_up(self, host: str, now: float) -> bool:
        status = self._hosts.get(host)
        return status is not None and status.up and now - status.last_seen <= self.down_after_s

    def down_since(self, host: str, now: float) -> float | None:
        """Since when `host` is shown down (None while it is up): when its heartbeats became
        overdue, or its last sign of life if its key was cut off before that. Until the
        master has listened for `down_after_s`, no host is down for its silence alone."""
        status = self._hosts.get(host)
        if status is None:
            return now if now > self._silence_counts_from else None
        overdue_at = status.last_seen + self.down_after_s
        if now > overdue_at and now > self._silence_counts_from:
            return overdue_at
        return None if status.up else status.last_seen

    def live_hosts(self, now: float) -> list[str]:
        return sorted(host for host in self._hosts if self.is_up(host, now))

    def expected_for(self, target: str, now: float) -> tuple[str, ...]:
        """The live hosts a sync of `target` waits for."""
        pattern = HostPattern(target)
        return tuple(host for host in self.live_hosts(now) if pattern.matches(host))

    def has_unsaved(self) -> bool:
        """Whether a host changed since the database last saw it."""
        return bool(self._dirty)

    def take_dirty(self) -> list[HostStatus]:
        dirty = [self._hosts[host] for host in sorted(self._dirty)]
        self._dirty.clear()
        return dirty

    def status(self, epoch: int, now: float) -> FleetStatus:
        """Every host with `up` as of `now`; a host whose standing did not change is shared,
        not copied, which is most of a large, healthy fleet."""
        seen_since = now - self.down_after_s
        hosts: dict[str, HostStatus] = {}
        for host, kept in sorted(self._hosts.items()):
            hosts[host] = (
                HostStatus(
                    host, False, kept.last_seen, kept.boot_id, kept.started_at, kept.last_report
                )
                if kept.up and kept.last_seen < seen_since
                else kept
            )
        return FleetStatus(epoch=epoch, now=now, hosts=hosts)


@dataclass(frozen=True)
class Waiter:
    """An operator waiting for a sync to complete. `route` is opaque to this module."""

    sync_id: str
    request_id: str
    route: tuple[bytes, ...]
    deadline: float


class Waiters:
    """Operators waiting, each until what it waits on is done or its deadline passes:
    the book's syncs and the rollout driver's rollouts keep one each."""

    def __init__(self) -> None:
        self._waiting: list[Waiter] = []

    def add(self, waiter: Waiter) -> None:
        self._waiting.append(waiter)

    @property
    def all(self) -> tuple[Waiter, ...]:
        return tuple(self._waiting)

    def next_deadline(self) -> float | None:
        return min((w.deadline for w in self._waiting), default=None)

    def release(self, monotonic_now: float, done: Callable[[str], bool]) -> list[Waiter]:
        """Remove and return the waiters whose sync id is `done`, or whose deadline passed."""
        released: list[Waiter] = []
        keep: list[Waiter] = []
        for waiter in self._waiting:
            over = done(waiter.sync_id) or waiter.deadline <= monotonic_now
            (released if over else keep).append(waiter)
        self._waiting = keep
        return released

    def release_all(self) -> list[Waiter]:
        released, self._waiting = self._waiting, []
        return released


@dataclass(frozen=True)
class Filed:
    """A report filed under a sync the book holds: the sync, and its tally before and after."""

    sync: Sync
    before: Tally
    after: Tally

    @property
    def completed(self) -> bool:
        """Whether this report was the last answer the sync waited for."""
        return self.before.state != COMPLETE and self.after.state == COMPLETE


class _Answer:
    """A host's answer as the book holds it: what tallies and republishes read, and, while
    the sync's reports are at hand, the report as it came on the wire. Decoded, a report is
    four times its payload, and a large fleet's syncs hold thousands; it is decoded again
    only for whoever asks."""

    __slots__ = ("finished_at", "ok", "payload")

    def __init__(self, finished_at: float, ok: bool, payload: bytes | None) -> None:
        self.finished_at = finished_at
        self.ok = ok
        self.payload = payload

    def report(self) -> Report:
        if self.payload is None:
            raise LookupError("this report was let go: the database has it")
        return wire.decode_again(Report, self.payload)


class _Entry:
    """The book's working copy of one sync: the answers so far, by host, and their running
    tally, kept up to date report by report so that filing a report never recounts a
    fleet's worth of answers.

    The reports themselves are `at_hand` until the book lets them go (`let_go`); the
    answers' times and outcomes stay for the rules above, and the database has the rest.
    """

    __slots__ = ("answered", "answers", "at_hand", "expected", "failed", "sync")

    def __init__(self, sync: Sync, answered: Mapping[str, Answered] | None = None) -> None:
        # Without answers: the entry keeps those itself.
        self.sync = replace(sync, results={}) if sync.results else sync
        self.expected = frozenset(sync.expected)
        self.answers: dict[str, _Answer] = {}
        self.answered = 0
        self.failed = 0
        # Answers from the database come without their reports.
        self.at_hand = answered is None
        closed_at = sync.closed_at or sync.issued_at
        for host, (ok, finished_at) in (answered or {}).items():
            self._keep(host, _Answer(finished_at, ok, None), closed_at)
        for report in sync.results.values():
            self.file(report, wire.payload(report), closed_at)

    @property
    def open(self) -> bool:
        return self.sync.closed_at is None

    def tally(self) -> Tally:
        return Tally(len(self.expected), self.answered, self.failed, len(self.sync.silent))

    def file(self, report: Report, payload: bytes | None, now: float) -> bool:
        """Keep the host's latest answer, and its report while the reports are at hand;
        True if it changed the answers. The last answer the sync waited for closes it."""
        if not is_newer(report, self.answers.get(report.host)):
            return False
        answer = _Answer(report.finished_at, report.ok, payload if self.at_hand else None)
        self._keep(report.host, answer, now)
        return True

    def _keep(self, host: str, answer: _Answer, now: float) -> None:
        current = self.answers.get(host)
        if current is None:
            self.answered += host in self.expected
        else:
            self.failed -= not current.ok
        self.failed += not answer.ok
        self.answers[host] = answer
        if self.open and self.answered == len(self.expected):
            self.sync = replace(self.sync, closed_at=now)

    def let_go(self) -> None:
        """Keep the answers' times and outcomes, not their reports."""
        if self.at_hand:
            self.at_hand = False
            for answer in self.answers.values():
                answer.payload = None

    def close(self, now: float, silent: dict[str, float | None]) -> None:
        self.sync = replace(self.sync, closed_at=now, silent=silent)

    def missing(self) -> list[str]:
        return [host for host in self.sync.expected if host not in self.answers]

    def snapshot(self) -> Sync:
        """The sync with its answers' reports, which must be at hand."""
        return self.sync.with_results(
            {host: answer.report() for host, answer in self.answers.items()}
        )


class SyncBook:
    """The recent syncs held in memory, and the operators waiting on them.

    The database holds every sync; this keeps the most recent `capacity`, because those are
    the ones reports arrive for, operators wait on, and republishes repeat. Their reports it
    keeps only for the open syncs and the newest, the ones an operator is waiting on or
    about to ask for: a closed sync's answers are a seventh of its reports (at 1,000 hosts,
    about 80 KB against 550 KB for each sync held).
    """

    def __init__(self, capacity: int = 64, max_results: int = 10_000) -> None:
        self._capacity = capacity
        # Every sync holds a report per host (half a kilobyte each): in a large fleet,
        # older syncs go sooner, so that memory does not grow with the fleet times 64.
        self._max_results = max_results
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._waiters = Waiters()

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def max_results(self) -> int:
        return self._max_results

    def __iter__(self) -> Iterator[Sync]:
        """The syncs held, oldest first, without their answers."""
        return (entry.sync for entry in self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, sync: Sync, answered: Mapping[str, Answered] | None = None) -> None:
        """Hold `sync` as the newest, unless it is held already; one that expects nobody is
        closed, complete, at once. With `answered` (a restarted master's, from the
        database), it holds those answers, and leaves their reports to the database."""
        if sync.sync_id in self._entries:
            return
        if sync.closed_at is None and not sync.expected:
            sync = replace(sync, closed_at=sync.issued_at)
        for held in self._entries.values():
            if not held.open:
                held.let_go()
        self._entries[sync.sync_id] = _Entry(sync, answered)
        results = sum(len(held.answers) for held in self._entries.values())
        # The newest sync always stays, however many results it holds.
        while len(self._entries) > self._capacity or (
            results > self._max_results and len(self._entries) > 1
        ):
            oldest = next(iter(self._entries))
            if any(w.sync_id == oldest for w in self._waiters.all):
                break  # someone still waits on it; it goes once they are answered
            results -= len(self._entries.pop(oldest).answers)

    def held(self, sync_id: str) -> Sync | None:
        """The sync, if held, without its answers."""
        entry = self._entries.get(sync_id)
        return entry.sync if entry else None

    def get(self, sync_id: str) -> Sync | None:
        """The sync with its answers so far, if held with its reports at hand; else None,
        and the database has it."""
        entry = self._entries.get(sync_id)
        return entry.snapshot() if entry and entry.at_hand else None

    def tally(self, sync_id: str) -> Tally | None:
        entry = self._entries.get(sync_id)
        return entry.tally() if entry else None

    def by_request(self, request_id: str) -> str | None:
        """The id of the sync held that an operator's request started."""
        for entry in self._entries.values():
            if entry.sync.request_id == request_id:
                return entry.sync.sync_id
        return None

    def record(self, report: Report, now: float, payload: bytes | None = None) -> Filed | None:
        """File a report, received at `now`, under its sync if that sync is held here.
        `payload` is the report as it came on the wire, kept in its place."""
        entry = self._entries.get(report.sync_id)
        if entry is None:
            return None
        before = entry.tally()
        if payload is None and entry.at_hand:
            payload = wire.payload(report)
        entry.file(report, payload, now)
        self._let_go_if_done(entry)
        return Filed(entry.sync, before, entry.tally())

    def _let_go_if_done(self, entry: _Entry) -> None:
        """A closed sync's reports go, but the newest's: its operator asks for them next."""
        if not entry.open and entry is not next(reversed(self._entries.values())):
            entry.let_go()

    def close_due(self, now: float, down_since: Callable[[str], float | None]) -> list[Sync]:
        """Close the open syncs that wait in vain: their deadline passed, or every host they
        still wait for is shown down. Each silent host is noted with since when it is down
        (None: it was up). Returns the syncs closed, with their answers where the book has
        their reports at hand; a restarted master's, held from the database, come without."""
        closed = []
        for entry in self._entries.values():
            if not entry.open:
                continue
            missing = entry.missing()
            down = {host: down_since(host) for host in missing}
            deadline = entry.sync.deadline
            if (deadline is not None and now >= deadline) or all(
                since is not None for since in down.values()
            ):
                entry.close(now, down)
                closed.append(entry.snapshot() if entry.at_hand else entry.sync)
                self._let_go_if_done(entry)
        return closed

    def open_syncs(self) -> list[str]:
        return [sync_id for sync_id, entry in self._entries.items() if entry.open]

    def nearest_deadline(self) -> float | None:
        """The earliest deadline of an open sync (wall clock)."""
        return min(
            (e.sync.deadline for e in self._entries.values() if e.open and e.sync.deadline),
            default=None,
        )

    def unfinished(
        self, now: float, window_s: float, limit: int, is_up: Callable[[str], bool]
    ) -> list[Sync]:
        """Syncs issued within `window_s` still waiting for a host that is up (a republish
        can reach it), newest last, at most `limit`; without their answers."""
        recent = [
            entry.sync
            for entry in self._entries.values()
            if now - entry.sync.issued_at <= window_s
            and any(host not in entry.answers and is_up(host) for host in entry.sync.expected)
        ]
        return recent[-limit:] if limit > 0 else []

    def failing(self, now: float, window_s: float, is_up: Callable[[str], bool]) -> bool:
        """Whether a sync issued within `window_s` holds a failed answer from a host that
        is up: sent again, the event has it try again."""
        return any(
            entry.failed
            and now - entry.sync.issued_at <= window_s
            and any(not answer.ok and is_up(host) for host, answer in entry.answers.items())
            for entry in self._entries.values()
        )

    # -- operators waiting ---------------------------------------------------------------------

    def wait(self, waiter: Waiter) -> None:
        self._waiters.add(waiter)

    @property
    def waiters(self) -> tuple[Waiter, ...]:
        return self._waiters.all

    def next_deadline(self) -> float | None:
        return self._waiters.next_deadline()

    def release(self, monotonic_now: float) -> list[Waiter]:
        """Remove and return the waiters whose sync is complete or whose deadline passed."""
        return self._waiters.release(monotonic_now, self._finished)

    def _finished(self, sync_id: str) -> bool:
        entry = self._entries.get(sync_id)
        return entry is None or not entry.open

    def release_all(self) -> list[Waiter]:
        return self._waiters.release_all()
