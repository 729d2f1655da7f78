"""What a sync did on a host: per-service results, and the report a minion sends back.

Apart from the installer, so that reading and writing reports (the wire format, every
operator command) does not import the installing machinery.
"""

from __future__ import annotations

from collections.abc import Mapping

from daybook.model.ids import is_valid_digest, is_valid_id
from daybook.model.names import is_valid_service, is_valid_version
from daybook.model.patterns import is_valid_host, is_valid_pattern
from daybook.model.rules import checked, record


@record
class HookResult:
    """How a host's hook for a service ran after `current` moved: its exit status (None
    when it could not start or ran past its time limit, said in `output`) and the tail of
    what it printed."""

    ok: bool
    exit: int | None = None
    output: str = ""


@record
class ServiceResult:
    """What one run did for one service: versions installed by it, already present, and
    failed (with why). `error` is set when the service's versions could not be listed, or
    its directory cannot hold them.

    With the release lifecycle switched on it also says which versions retention removed
    (and kept, with why), where `current` points (and `previous`, when this run moved it),
    and how the hook ran.
    """

    installed: tuple[str, ...] = checked(is_valid_version, default=())
    present: tuple[str, ...] = checked(is_valid_version, default=())
    failed: Mapping[str, str] = checked(key=is_valid_version, default_factory=dict)
    error: str | None = None
    removed: tuple[str, ...] = checked(is_valid_version, default=())
    current: str | None = checked(is_valid_version, default=None)
    previous: str | None = checked(is_valid_version, default=None)
    hook: HookResult | None = None
    # Versions past the newest N that retention left in place, and why: "current",
    # "pinned", "in use" (a process runs from it or holds a file in it).
    kept: Mapping[str, str] = checked(key=is_valid_version, default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failed and self.error is None and (self.hook is None or self.hook.ok)


# Per service, by name: what one install run, pull or sync did.
ServiceResults = Mapping[str, ServiceResult]


def all_ok(results: ServiceResults) -> bool:
    return all(result.ok for result in results.values())


@record
class Report:
    """One minion's answer to one sync: what it installed, found present, or failed and why.

    `report_id` is unique per report, so a report sent twice (after a reconnect or a master
    restart) is recorded once. `error` is set when the sync failed outside any one service.
    """

    report_id: str = checked(is_valid_id)
    host: str = checked(is_valid_host)
    sync_id: str = checked(is_valid_id)
    epoch: int
    seq: int
    state_digest: str = checked(is_valid_digest)
    pattern: str | None = checked(is_valid_pattern)
    services: ServiceResults = checked(key=is_valid_service)
    installed: Mapping[str, tuple[str, ...]] = checked(is_valid_version, key=is_valid_service)
    started_at: float
    finished_at: float
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and all_ok(self.services)

    @property
    def duration_s(self) -> float:
        return max(0.0, self.finished_at - self.started_at)
