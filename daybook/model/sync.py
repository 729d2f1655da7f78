"""A sync: what was asked of which hosts, the answers so far, and how they add up."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from daybook.model.ids import is_valid_id
from daybook.model.patterns import is_valid_host, is_valid_pattern
from daybook.model.results import Report
from daybook.model.rules import checked, record

# Who started a sync: an operator, the master on a change it saw, or the master's start.
SYNC_ORIGINS = frozenset({"operator", "auto", "startup"})


def is_sync_origin(text: str) -> bool:
    return text in SYNC_ORIGINS


@record
class Tally:
    """How the answers to one sync add up: each expected host counts once, by its latest
    report; `failed` counts every host that answered with a failure."""

    expected: int
    answered: int
    failed: int

    @property
    def missing(self) -> int:
        return self.expected - self.answered

    @property
    def complete(self) -> bool:
        return self.missing == 0

    @property
    def ok(self) -> bool:
        return self.complete and self.failed == 0


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

    @property
    def missing(self) -> tuple[str, ...]:
        return tuple(host for host in self.expected if host not in self.results)

    def tally(self) -> Tally:
        answered = sum(1 for host in self.expected if host in self.results)
        failed = sum(1 for report in self.results.values() if not report.ok)
        return Tally(expected=len(self.expected), answered=answered, failed=failed)

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


def is_newer(report: Report, than: Report | None) -> bool:
    """Whether `report` should replace `than` as a host's latest: an old one resent is not."""
    return than is None or report.finished_at >= than.finished_at
