"""Mapping values: the comma-separated service lists stored under each host pattern."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from daybook.model.names import check_service, is_valid_service

log = logging.getLogger(__name__)

# pattern -> services, in the order the operator wrote them.
MappingTable = dict[str, tuple[str, ...]]


def parse_services(value: str, *, context: str = "") -> tuple[str, ...]:
    """Split a stored value: trim, drop empty entries and duplicates, keep order.

    Invalid service names found in stored data are skipped with a warning: a bad entry
    written by some other tool must not take the whole table down.
    """
    services: list[str] = []
    for raw in value.split(","):
        name = raw.strip()
        if not name or name in services:
            continue
        if not is_valid_service(name):
            log.warning(
                "skipping invalid service name %r%s", name, f" in {context}" if context else ""
            )
            continue
        services.append(name)
    return tuple(services)


def format_services(services: Iterable[str]) -> str:
    return ",".join(services)


def unique_services(services: Iterable[str]) -> tuple[str, ...]:
    """Validate operator-supplied names and drop duplicates, keeping order."""
    result: list[str] = []
    for name in services:
        check_service(name)
        if name not in result:
            result.append(name)
    return tuple(result)
