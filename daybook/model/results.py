"""What an install run did, per service: the results reports carry and commands print.

Apart from the installer, so that reading and writing reports (the wire format, every
operator command) does not import the installing machinery.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ServiceResult:
    """What one run did for one service. `error` is set when its versions could not be listed."""

    installed: tuple[str, ...] = ()
    present: tuple[str, ...] = ()
    failed: Mapping[str, str] = field(default_factory=dict)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return not self.failed and self.error is None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "installed": list(self.installed),
            "present": list(self.present),
            "failed": dict(self.failed),
        }
        if self.error is not None:
            data["error"] = self.error
        return data


@dataclass(frozen=True)
class SyncOutcome:
    """Per-service results of one sync of a host's services."""

    services: Mapping[str, ServiceResult]

    @property
    def ok(self) -> bool:
        return all(result.ok for result in self.services.values())

    def to_json(self) -> dict[str, Any]:
        return {name: result.to_json() for name, result in self.services.items()}
