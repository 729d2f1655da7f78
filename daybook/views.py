"""The JSON shapes of the model: one view per concept, for every place that shows it.

`daybook ... --json`, the master's HTTP API and the dashboard all render hosts, syncs,
reports and keys through these functions, so scripts see one shape everywhere (the CLI
contract's). Times become ISO-8601 strings in UTC; derived facts (`ok`, `missing`,
`complete`) are computed by the model, never here.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    # Only named in annotations: `daybook pull` needs two of these views and should not
    # load the fleet's, keys' and rollouts' types to get them.
    from daybook.model.fleet import FleetStatus, HostStatus
    from daybook.model.keys import Key, KeyListing
    from daybook.model.leadership import MasterView
    from daybook.model.results import Report, ServiceResult, ServiceResults
    from daybook.model.rollout import Rollout
    from daybook.model.sync import Sync, Tally


def iso_time(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds")


def service_result_json(result: ServiceResult) -> dict[str, Any]:
    """`{"installed": [...], "present": [...], "failed": {version: reason}}`, and `error`."""
    document: dict[str, Any] = {
        "installed": list(result.installed),
        "present": list(result.present),
        "failed": dict(result.failed),
    }
    if result.error is not None:
        document["error"] = result.error
    # The release lifecycle's fields appear only where it is switched on.
    if result.removed:
        document["removed"] = list(result.removed)
    if result.kept:
        document["kept"] = dict(result.kept)
    if result.current is not None:
        document["current"] = result.current
    if result.previous is not None:
        document["previous"] = result.previous
    if result.hook is not None:
        document["hook"] = {
            "ok": result.hook.ok,
            "exit": result.hook.exit,
            "output": result.hook.output,
        }
    return document


def service_results_json(results: ServiceResults) -> dict[str, Any]:
    return {name: service_result_json(result) for name, result in results.items()}


def report_json(report: Report) -> dict[str, Any]:
    document: dict[str, Any] = {
        "ok": report.ok,
        "pattern": report.pattern,
        "services": service_results_json(report.services),
        "installed": {name: list(versions) for name, versions in report.installed.items()},
        "finished_at": iso_time(report.finished_at),
        "duration_s": round(report.duration_s, 4),
    }
    if report.error is not None:
        document["error"] = report.error
    return document


def sync_json(sync: Sync) -> dict[str, Any]:
    """`{"sync_id", "expected", "results": {host: {"ok", "services"}}, "missing", ...}`,
    with `state` (running, complete or incomplete) and, once it closed, `silent`: each host
    that had not answered then and why (`down` since when, or `no answer`). An answer that
    came after that is in `results`, marked `late`."""
    late = set(sync.late)
    return {
        "sync_id": sync.sync_id,
        "target": sync.target,
        "origin": sync.origin,
        "issued_at": iso_time(sync.issued_at),
        "expected": list(sync.expected),
        "results": {
            host: report_json(report) | ({"late": True} if host in late else {})
            for host, report in sync.results.items()
        },
        "missing": list(sync.missing),
        "complete": sync.complete,
        "ok": sync.ok,
        "state": sync.state,
        "deadline": iso_time(sync.deadline),
        "closed_at": iso_time(sync.closed_at),
        "silent": {host: silence_json(since) for host, since in sync.silent.items()},
    }


def rollout_json(summary: Sync, rollout: Rollout) -> dict[str, Any]:
    """A rolling sync as `sync_json` shows a sync (under the rollout's id: every host of
    every batch expected), with `"batches": [[host, ...], ...]`, `"halted"`, the hosts
    `"synced"`, `"failed"` (each with why: failed, or did not answer) and `"not_reached"`,
    and `state` running, complete, halted or aborted."""
    return sync_json(summary) | {
        "state": rollout.state,
        "rolling": rollout_state_json(rollout),
        "batches": [list(batch) for batch in rollout.batches],
        "halted": rollout.halted,
        "synced": list(rollout.synced),
        "failed": dict(rollout.failed),
        "not_reached": list(rollout.not_reached),
        "why": rollout.why,
    }


def rollout_state_json(rollout: Rollout) -> dict[str, Any]:
    """How one rolling sync stands, without the answers: for `daybook status`."""
    running = rollout.running_batch
    return {
        "sync_id": rollout.rollout_id,
        "target": rollout.target,
        "state": rollout.state,
        "batches": len(rollout.batches),
        "batch_size": max((len(batch) for batch in rollout.batches), default=0),
        "batches_done": rollout.closed,
        "running_batch": None if running is None else running + 1,
        "batch_syncs": list(rollout.batch_syncs),
        "max_failures": rollout.max_failures,
        "batch_wait_s": rollout.batch_wait_s,
        "synced": len(rollout.synced),
        "failed": dict(rollout.failed),
        "not_reached": len(rollout.not_reached),
        "why": rollout.why,
        "pin": None
        if rollout.pin is None
        else {"service": rollout.pin.service, "version": rollout.pin.version},
        "started_at": iso_time(rollout.started_at),
        "ended_at": iso_time(rollout.ended_at),
    }


def silence_json(down_since: float | None) -> dict[str, Any]:
    """Why an expected host did not answer a sync before it closed."""
    if down_since is None:
        return {"reason": "no answer"}
    return {"reason": "down", "since": iso_time(down_since)}


def sync_tally_json(sync: Sync, tally: Tally) -> dict[str, Any]:
    """One sync in a listing: its counts instead of every host's report."""
    return {
        "sync_id": sync.sync_id,
        "target": sync.target,
        "origin": sync.origin,
        "issued_at": iso_time(sync.issued_at),
        "hosts": {
            "expected": tally.expected,
            "answered": tally.answered,
            "failed": tally.failed,
            "missing": tally.missing,
        },
        "complete": tally.complete,
        "ok": tally.ok,
        "state": tally.state,
        "closed_at": iso_time(sync.closed_at),
        "silent": list(sync.silent),
    }


def host_json(status: HostStatus, now: float) -> dict[str, Any]:
    report = status.last_report
    last_sync: dict[str, Any] | None = None
    if report is not None:
        last_sync = {"sync_id": report.sync_id, **report_json(report)}
        del last_sync["installed"]
    return {
        "up": status.up,
        "last_seen": iso_time(status.last_seen),
        "last_seen_ago_s": round(max(0.0, now - status.last_seen), 3),
        "started_at": iso_time(status.started_at),
        "last_sync": last_sync,
        "installed": (
            {name: list(versions) for name, versions in report.installed.items()} if report else {}
        ),
    }


def status_json(status: FleetStatus) -> dict[str, Any]:
    """`{"hosts": {host: {"up", "last_seen", "last_sync": {...}, "installed"}}}`, and the
    recent syncs with how each stands (`"syncs": [{"sync_id", "state", "silent"}, ...]`)."""
    return {
        "hosts": {host: host_json(entry, status.now) for host, entry in status.hosts.items()},
        "epoch": status.epoch,
        "syncs": [sync_state_json(sync) for sync in reversed(status.syncs)],
        "rollouts": [rollout_state_json(rollout) for rollout in reversed(status.rollouts)],
        "masters": [master_json(master) for master in status.masters],
    }


def master_json(master: MasterView) -> dict[str, Any]:
    """`{"address": "m1:4505", "role": "leader"|"standby"|"unreachable", "term": 7,
    "since": ...}`: one master of the fleet."""
    return {
        "address": master.address,
        "role": master.role,
        "term": master.term,
        "since": iso_time(master.since),
    }


def sync_state_json(sync: Sync) -> dict[str, Any]:
    """How one sync stands, without the answers: for listings of many syncs."""
    return {
        "sync_id": sync.sync_id,
        "target": sync.target,
        "origin": sync.origin,
        "issued_at": iso_time(sync.issued_at),
        "expected": len(sync.expected),
        "state": sync.state,
        "closed_at": iso_time(sync.closed_at),
        "silent": {host: silence_json(since) for host, since in sync.silent.items()},
    }


def key_json(key: Key) -> dict[str, Any]:
    return {
        "host": key.host,
        "fingerprint": key.fingerprint,
        "role": key.role,
        "state": key.state,
        "address": key.address,
        "first_seen": iso_time(key.first_seen),
        "last_seen": iso_time(key.last_seen),
        "public_key": key.public_key,
    }


def keys_json(listing: KeyListing) -> dict[str, Any]:
    """`{"accepted": [{"host", "fingerprint", ...}], "pending": [...], "rejected": [...]}`"""
    from daybook.model.keys import KEY_STATES  # not at the top: see the imports above

    return {state: [key_json(key) for key in getattr(listing, state)] for state in KEY_STATES}
