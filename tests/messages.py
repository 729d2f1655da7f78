"""Builds fleet messages for tests: heartbeats and reports with sensible defaults."""

from __future__ import annotations

from daybook.model.ids import versions_digest
from daybook.model.messages import Heartbeat
from daybook.model.results import Report, ServiceResult


def heartbeat(host: str, boot_id: str = "boot1", **changes: object) -> Heartbeat:
    fields: dict[str, object] = {
        "host": host,
        "boot_id": boot_id,
        "started_at": 1.0,
        "sent_at": 2.0,
        "epoch": 0,
        "seq": 0,
        "state_digest": None,
        "busy": False,
    }
    fields.update(changes)
    return Heartbeat(**fields)  # type: ignore[arg-type]


def report(
    host: str,
    sync_id: str = "s1",
    *,
    finished_at: float = 10.0,
    ok: bool = True,
    report_id: str | None = None,
) -> Report:
    result = ServiceResult(present=("1",)) if ok else ServiceResult(failed={"1": "bad"})
    return Report(
        report_id=report_id or f"{host}-{sync_id}-{int(finished_at * 1000)}",
        host=host,
        sync_id=sync_id,
        epoch=1,
        seq=1,
        state_digest=versions_digest([]),
        pattern="*",
        services={"web": result},
        installed={"web": ("1",)},
        started_at=finished_at - 1,
        finished_at=finished_at,
    )
