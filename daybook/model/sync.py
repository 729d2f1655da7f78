"""A sync: what was asked of which hosts, the answers so far, and how they add up."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import NamedTuple, Protocol

from daybook.model.ids import is_valid_id
from daybook.model.patterns import is_valid_host, is_valid_pattern
from daybook.model.results import Report
from daybook.model.rules import checked, record

# Who started a sync: an operator, the master on a change it saw, or the master's start.
SYNC_ORIGINS = frozenset({"operator", "auto", "startup"})
# How a sync stands: waiting for answers, answered by every host it expected, or closed
# (its deadline passed, or every host it still waited for was down) with some silent.
RUNNING, COMPLETE, INCOMPLETE = "running", "complete", "incomplete"


def is_sync_origin(text: str) -> bool:
    return text in SYNC_ORIGINS


@record
class Tally:
    """How the answers to one sync add up: each expected host counts once, by its latest
    report; `failed` counts every host that answered with a failure; `silent` the expected
    hosts that had not answered when the sync closed (a late answer does not reopen it)."""

    expected: int
    answered: int
    failed: int
    silent: int = 0

    @property
    def missing(self) -> int:
        return self.expected - self.answered

    @property
    def complete(self) -> bool:
        return self.missing == 0

    @property
    def ok(self) -> bool:
        return self.complete and self.failed == 0

    @property
    def state(self) -> str:
        if self.silent:
            return INCOMPLETE
        return COMPLETE if self.complete else RUNNING


@record
class Sync:
    """One sync: its target, the live hosts it expects, and the latest report of each host
    heard from so far. `request_id` is the operator request that started it, if any, so a
    retried request does not start another."""

    sync_id: str = checked(is_valid_id)
    target: str = checked(is_valid_pattern)
    origin: str = checked(is_sync_origin, max_len=32, problem="is not a known origin")
    issued_at: float
    expected: tuple[str, ...] = checked(is_valid_host)
    results: Mapping[str, Report] = checked(key=is_valid_host, default_factory=dict)
    request_id: str | None = checked(is_valid_id, default=None)
    # When it stops waiting (wall clock; None: when every expected host has answered).
    deadline: float | None = None
    # When it stopped waiting, and the hosts still silent then, each with the time it was
    # shown down since (None: it was up, but did not answer).
    closed_at: float | None = None
    silent: Mapping[str, float | None] = checked(key=is_valid_host, default_factory=dict)
    # A batch of a rolling sync is addressed to its hosts only (None: every matching host).
    hosts: tuple[str, ...] | None = checked(is_valid_host, default=None)

    @property
    def missing(self) -> tuple[str, ...]:
        return tuple(host for host in self.expected if host not in self.results)

    def tally(self) -> Tally:
        answered = sum(1 for host in self.expected if host in self.results)
        failed = sum(1 for report in self.results.values() if not report.ok)
        return Tally(len(self.expected), answered, failed, silent=len(self.silent))

    @property
    def state(self) -> str:
        """running, complete or incomplete. A sync the master closed says so by its
        `closed_at` even when its answers are not carried along (as in a fleet status)."""
        if self.silent:
            return INCOMPLETE
        return COMPLETE if self.closed_at is not None else self.tally().state

    @property
    def late(self) -> tuple[str, ...]:
        """Hosts that answered after the sync had closed without them."""
        return tuple(host for host in self.silent if host in self.results)

    def with_report(self, report: Report) -> Sync:
        """This sync with `report` as its host's answer, unless an answer finished later is
        already there (a report resent after a newer one)."""
        if not is_newer(report, self.results.get(report.host)):
            return self
        return replace(self, results={**self.results, report.host: report})

    @property
    def complete(self) -> bool:
        return self.tally().complete

    @property
    def ok(self) -> bool:
        return self.tally().ok

    def with_results(self, results: Mapping[str, Report]) -> Sync:
        """This sync with `results` as its answers, by host in name order."""
        return replace(self, results=dict(sorted(results.items())))


class Answer(Protocol):
    """A report, or what a holder of many keeps of one."""

    @property
    def finished_at(self) -> float: ...


class Answered(NamedTuple):
    """A host's latest answer to a sync without its report: what the tallies count."""

    ok: bool
    finished_at: float


def is_newer(report: Answer, than: Answer | None) -> bool:
    """Whether `report` should replace `than` as a host's latest: an old one resent is not."""
    return than is None or report.finished_at >= than.finished_at
