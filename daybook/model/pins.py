"""Pins: which version of a service `current` points at across the fleet, and how far a
rolling sync has carried a pin so far."""

from __future__ import annotations

from daybook.model.names import is_valid_service, is_valid_version
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
