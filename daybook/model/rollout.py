"""A rolling sync: the targeted hosts split into batches, synced one batch after another,
halted as soon as more hosts have failed than the operator allows.

Pure values and transitions: the master's rollout driver decides when a batch has closed
and what each of its hosts answered; what that means for the rollout is decided here.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import replace

from daybook.errors import InputError
from daybook.model.ids import is_valid_id
from daybook.model.patterns import is_valid_host, is_valid_pattern
from daybook.model.pins import Pin
from daybook.model.results import Report
from daybook.model.rules import checked, record
from daybook.model.sync import Sync

# How a rollout stands: batches still to go, every batch done, stopped by too many failures,
# or stopped by an operator.
RUNNING, COMPLETE, HALTED, ABORTED = "running", "complete", "halted", "aborted"
ROLLOUT_STATES = frozenset({RUNNING, COMPLETE, HALTED, ABORTED})
# Why a host counts as failed: it answered with a failure, or not at all before its batch
# closed (ansible #7686: an unreachable host is a failure, not a skipped one).
FAILED, NO_ANSWER = "failed", "did not answer"
FAILURE_REASONS = frozenset({FAILED, NO_ANSWER})
# A batch size in hosts is capped only to keep a typo from meaning "everything at once".
MAX_BATCH_HOSTS = 100_000
_BATCH_RE = re.compile(r"([0-9]{1,6})(%?)")


def is_rollout_state(text: str) -> bool:
    return text in ROLLOUT_STATES


def is_failure_reason(text: str) -> bool:
    return text in FAILURE_REASONS


@record
class BatchSize:
    """`count` hosts per batch, or `percent` of the targeted hosts (rounded up)."""

    count: int | None = checked(minimum=1, maximum=MAX_BATCH_HOSTS, default=None)
    percent: int | None = checked(minimum=1, maximum=100, default=None)

    def __post_init__(self) -> None:
        if (self.count is None) == (self.percent is None):
            raise ValueError("a batch size is a count or a percentage, not both")

    def hosts_per_batch(self, total: int) -> int:
        """How many of `total` hosts go in each batch: at least one."""
        if self.count is not None:
            return self.count
        assert self.percent is not None
        return max(1, math.ceil(total * self.percent / 100))

    def __str__(self) -> str:
        return f"{self.percent}%" if self.percent is not None else str(self.count)


def parse_batch_size(text: str) -> BatchSize:
    """`"3"` or `"30%"`; InputError for 0, negatives, more than 100% or anything else."""
    match = _BATCH_RE.fullmatch(text.strip())
    if match is None:
        raise InputError(f"a batch size is a host count or a percentage (3, 30%), not {text!r}")
    number, percent = int(match.group(1)), bool(match.group(2))
    if number < 1:
        raise InputError(f"a batch must hold at least one host, not {text!r}")
    if percent and number > 100:
        raise InputError(f"a batch can hold at most 100% of the hosts, not {text!r}")
    if not percent and number > MAX_BATCH_HOSTS:
        raise InputError(f"a batch can hold at most {MAX_BATCH_HOSTS} hosts, not {text!r}")
    return BatchSize(percent=number) if percent else BatchSize(count=number)


def split_batches(hosts: Iterable[str], size: BatchSize) -> tuple[tuple[str, ...], ...]:
    """`hosts` in name order, cut into batches of `size` (the last may be smaller)."""
    ordered = sorted(set(hosts))
    step = size.hosts_per_batch(len(ordered))
    return tuple(tuple(ordered[i : i + step]) for i in range(0, len(ordered), step))


@record
class Rollout:
    """One rolling sync. `rollout_id` is the id the operator sees (and asks about, as a sync
    id); each batch is a sync of its own, `batch_syncs[i]` the id of batch i's.

    `closed` counts the batches that have ended; a batch is running while more have been
    started (`len(batch_syncs)`) than closed. Failures count across batches: the rollout
    halts once `failed` holds more than `max_failures` hosts, and from then on starts no
    batch (salt #29643: a halt that halts).
    """

    rollout_id: str = checked(is_valid_id)
    target: str = checked(is_valid_pattern)
    batches: tuple[tuple[str, ...], ...] = checked(is_valid_host)
    max_failures: int = checked(minimum=0, maximum=MAX_BATCH_HOSTS)
    batch_wait_s: float = checked(minimum=0, maximum=24 * 3600.0)
    # How long each batch waits for its hosts before the silent ones count as failed.
    batch_timeout_s: float = checked(minimum=0, maximum=24 * 3600.0)
    started_at: float
    request_id: str | None = checked(is_valid_id, default=None)
    batch_syncs: tuple[str, ...] = checked(is_valid_id, default=())
    closed: int = 0
    synced: tuple[str, ...] = checked(is_valid_host, default=())
    failed: Mapping[str, str] = checked(
        is_failure_reason, key=is_valid_host, default_factory=dict, problem="is not a reason"
    )
    state: str = checked(is_rollout_state, max_len=16, default=RUNNING)
    why: str | None = checked(default=None)
    ended_at: float | None = None
    # When the batch closed last, so the next waits `batch_wait_s` after it.
    last_closed_at: float | None = None
    # The pin this rollout carries, if any: it owns it until it completes or is aborted.
    pin: Pin | None = None

    # -- how it stands --------------------------------------------------------------------------

    @property
    def hosts(self) -> tuple[str, ...]:
        return tuple(host for batch in self.batches for host in batch)

    @property
    def running_batch(self) -> int | None:
        """The index of the batch under way, if one is."""
        started = len(self.batch_syncs)
        return started - 1 if started > self.closed else None

    @property
    def reached(self) -> tuple[str, ...]:
        """The hosts of every batch started so far."""
        return tuple(host for batch in self.batches[: len(self.batch_syncs)] for host in batch)

    @property
    def not_reached(self) -> tuple[str, ...]:
        return tuple(host for batch in self.batches[len(self.batch_syncs) :] for host in batch)

    @property
    def halted(self) -> bool:
        return self.state == HALTED

    @property
    def ended(self) -> bool:
        return self.state != RUNNING

    def next_batch(self, now: float) -> tuple[str, ...] | None:
        """The hosts of the batch to start at `now`, if one should start: the rollout runs,
        no batch is under way, one is left, and the wait after the last one is over."""
        if self.state != RUNNING or self.running_batch is not None:
            return None
        started = len(self.batch_syncs)
        if started >= len(self.batches):
            return None
        if self.last_closed_at is not None and now < self.last_closed_at + self.batch_wait_s:
            return None
        return self.batches[started]

    def next_batch_due(self) -> float | None:
        """When the next batch may start (wall clock), if one is waiting to."""
        if self.state != RUNNING or self.running_batch is not None:
            return None
        if len(self.batch_syncs) >= len(self.batches):
            return None
        return (self.last_closed_at or self.started_at) + (
            self.batch_wait_s if self.last_closed_at is not None else 0.0
        )

    # -- transitions ----------------------------------------------------------------------------

    def with_batch_started(self, sync_id: str) -> Rollout:
        """The next batch is under way as sync `sync_id`. Refused unless one may start."""
        if self.state != RUNNING:
            raise ValueError(f"rollout {self.rollout_id} is {self.state}: no batch starts")
        if self.running_batch is not None:
            raise ValueError(f"batch {self.running_batch + 1} is still running")
        if len(self.batch_syncs) >= len(self.batches):
            raise ValueError("every batch has started already")
        return replace(self, batch_syncs=(*self.batch_syncs, sync_id))

    def with_batch_result(self, results: Mapping[str, Report], now: float) -> Rollout:
        """The running batch closed with `results` (each host's answer, if it gave one);
        count its failures with the earlier ones, and halt or go on."""
        index = self.running_batch
        if index is None:
            raise ValueError("no batch is running")
        batch = self.batches[index]
        synced = [host for host in batch if host in results and results[host].ok]
        failed = {host: batch_failure(results.get(host)) for host in batch if host not in synced}
        after = replace(
            self,
            closed=self.closed + 1,
            synced=(*self.synced, *synced),
            failed={**self.failed, **failed},
            last_closed_at=now,
        )
        if len(after.failed) > self.max_failures:
            why = (
                f"{len(after.failed)} host(s) failed, more than the {self.max_failures} allowed, "
                f"in batch {index + 1} of {len(self.batches)}"
            )
            return replace(after, state=HALTED, why=why, ended_at=now)
        if after.closed == len(self.batches):
            return replace(after, state=COMPLETE, ended_at=now)
        return after

    def stopped(self, why: str, now: float) -> Rollout:
        """Halted for a reason of its own (its pin could not be stored): no further batch."""
        if self.state != RUNNING:
            raise ValueError(f"rollout {self.rollout_id} is {self.state} already")
        return replace(self, state=HALTED, why=why, ended_at=now)

    def aborted(self, now: float) -> Rollout:
        """Stopped by an operator: no further batch; the one under way, if any, finishes
        but its answers no longer count. A halted rollout may be aborted too: that is how
        an operator gives up on it, and its pin goes back (see master/rollouts.py)."""
        if self.state not in (RUNNING, HALTED):
            raise ValueError(f"rollout {self.rollout_id} is {self.state} already")
        why = "aborted by an operator" + (f" after it halted: {self.why}" if self.why else "")
        return replace(self, state=ABORTED, why=why, ended_at=now)


def batch_failure(report: Report | None) -> str:
    """Why a host of a closed batch counts as failed."""
    return NO_ANSWER if report is None else FAILED


def start_rollout(
    *,
    rollout_id: str,
    target: str,
    hosts: Iterable[str],
    size: BatchSize,
    max_failures: int,
    batch_wait_s: float,
    batch_timeout_s: float,
    now: float,
    request_id: str | None = None,
    pin: Pin | None = None,
) -> Rollout:
    """A rollout of `hosts` that has started no batch yet; with no host it is complete."""
    batches = split_batches(hosts, size)
    rollout = Rollout(
        rollout_id=rollout_id,
        target=target,
        batches=batches,
        max_failures=max_failures,
        batch_wait_s=batch_wait_s,
        batch_timeout_s=batch_timeout_s,
        started_at=now,
        request_id=request_id,
        pin=pin,
    )
    return rollout if batches else replace(rollout, state=COMPLETE, ended_at=now)


def rollout_summary(rollout: Rollout, batch_syncs: Iterable[Sync]) -> Sync:
    """The rollout as one sync under its own id, as `daybook sync --json` shows a sync: it
    expects every host of every batch; its answers are each batch's; a host that did not
    answer its batch is silent; a host never reached is only missing. It closes when the
    rollout ends."""
    batch_hosts = set(rollout.reached)
    results: dict[str, Report] = {}
    silent: dict[str, float | None] = {}
    for sync in batch_syncs:
        if sync.sync_id not in rollout.batch_syncs:
            continue
        for host, report in sync.results.items():
            if host in batch_hosts and host in sync.expected:
                results[host] = report
        silent.update({host: since for host, since in sync.silent.items() if host in batch_hosts})
    return Sync(
        sync_id=rollout.rollout_id,
        target=rollout.target,
        origin="operator",
        issued_at=rollout.started_at,
        expected=rollout.hosts,
        results=dict(sorted(results.items())),
        request_id=rollout.request_id,
        closed_at=rollout.ended_at,
        silent=silent,
    )
