"""Mapping plans: what a proposed mapping change would do to each known host, before any write."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from daybook.model.mappings import MappingTable
from daybook.model.patterns import PatternTable, check_pattern


@dataclass(frozen=True)
class HostChange:
    """One host whose winning pattern or services would change."""

    host: str
    pattern_before: str | None
    pattern_after: str | None
    services_before: tuple[str, ...]
    services_after: tuple[str, ...]
    # In the order of services_after and services_before respectively.
    gained: tuple[str, ...]
    lost: tuple[str, ...]

    @property
    def pattern_changed(self) -> bool:
        return self.pattern_before != self.pattern_after


@dataclass(frozen=True)
class MappingPlan:
    """Every known host the change affects, by host name; the others are only counted."""

    changes: tuple[HostChange, ...]
    unchanged: int

    @property
    def hosts(self) -> int:
        return len(self.changes) + self.unchanged

    def gaining(self, service: str) -> tuple[str, ...]:
        return tuple(change.host for change in self.changes if service in change.gained)

    def losing(self, service: str) -> tuple[str, ...]:
        return tuple(change.host for change in self.changes if service in change.lost)


def plan_mappings(
    current: Mapping[str, Iterable[str]],
    proposed: Mapping[str, Iterable[str]],
    hosts: Iterable[str],
) -> MappingPlan:
    """Resolve every host against both tables and keep those whose result differs.

    A host whose winning pattern changes but whose services stay the same is a change too:
    the operator should see that a different rule now governs it.
    """
    before, after = PatternTable(current), PatternTable(proposed)
    changes: list[HostChange] = []
    unchanged = 0
    for host in sorted(set(hosts)):
        old, new = before.best_match(host), after.best_match(host)
        if old == new:
            unchanged += 1
            continue
        services_before = old.services if old else ()
        services_after = new.services if new else ()
        changes.append(
            HostChange(
                host=host,
                pattern_before=old.pattern if old else None,
                pattern_after=new.pattern if new else None,
                services_before=services_before,
                services_after=services_after,
                gained=tuple(s for s in services_after if s not in services_before),
                lost=tuple(s for s in services_before if s not in services_after),
            )
        )
    return MappingPlan(changes=tuple(changes), unchanged=unchanged)


def with_pattern(mappings: MappingTable, pattern: str, services: Iterable[str]) -> MappingTable:
    """A copy of `mappings` where `pattern` has `services`; with none, without the pattern.

    This is the table a `map set`/`add`/`remove` would leave, for planning it before the
    write. Patterns ignore case, so a differently spelled key for the same pattern goes too.
    """
    normalised = check_pattern(pattern)
    wanted = tuple(services)
    table = {key: value for key, value in mappings.items() if key.lower() != normalised}
    if wanted:
        table[normalised] = wanted
    return table
