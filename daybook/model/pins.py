"""Pins: which version of a service `current` points at across the fleet, and how far a
rolling sync has carried a pin so far."""

from __future__ import annotations

from collections.abc import Iterable

from daybook.errors import PinError
from daybook.model.names import (
    is_valid_service,
    is_valid_version,
    sorted_versions,
    version_sort_key,
)
from daybook.model.patterns import is_valid_host
from daybook.model.rules import checked, record


@record
class Pin:
    """`service` is pinned to `version`. While a rolling sync carries the pin batch by
    batch, `hosts` names the hosts it has reached so far and every other host keeps
    `previous` (None: no pin, the newest installed version); `hosts` None means every host.
    A rollout widens `hosts` as its batches answer, clears it when it completes, and puts
    `previous` back when it is aborted."""

    service: str = checked(is_valid_service)
    version: str = checked(is_valid_version)
    previous: str | None = checked(is_valid_version, default=None)
    hosts: tuple[str, ...] | None = checked(is_valid_host, default=None)

    def version_for(self, host: str) -> str | None:
        """The pinned version `host` should run, None when it should run its newest."""
        if self.hosts is None or host.lower() in self.hosts:
            return self.version
        return self.previous


def fleet_current(versions: Iterable[str], pin: Pin | None) -> str | None:
    """The version `current` points at across the fleet: the pinned one if there is a pin,
    else the newest in the store (None when the store holds none)."""
    if pin is not None:
        return pin.version
    ordered = sorted_versions(set(versions))
    return ordered[-1] if ordered else None


def rollback_target(service: str, versions: Iterable[str], pin: Pin | None) -> tuple[str, str]:
    """`(current, older)`: what `current` points at now and the next older version in the
    store, which a rollback pins. A pinned version the store no longer holds still orders
    among the others. PinError when nothing is older."""
    held = set(versions)
    current = fleet_current(held, pin)
    if current is None:
        raise PinError(f"{service}: the store holds no versions, so there is nothing to roll back")
    key = (version_sort_key(current), current)
    older = [v for v in sorted_versions(held) if (version_sort_key(v), v) < key]
    if not older:
        raise PinError(f"{service}: no version older than {current} in the store to roll back to")
    return current, older[-1]


def repinned(service: str, version: str, pin: Pin | None) -> Pin:
    """The pin that points `service` at `version` fleet-wide, remembering the version the
    old pin named (None when there was none) as `previous`."""
    if pin is None:
        return Pin(service, version)
    if pin.version == version:
        if pin.hosts is None:
            return pin  # already pinned there everywhere: nothing changes, nothing is written
        # A rollout of this very version, now made fleet-wide: what the hosts it had not
        # reached ran stays the one to remember.
        return Pin(service, version, previous=pin.previous)
    return Pin(service, version, previous=pin.version)
