"""The HTTP API's documents: JSON views of the fleet snapshot and of the results history.

Plain functions of a frozen snapshot, the read-only history and a clock reading, so each
document is tested without a server. Hosts and syncs are rendered as `daybook status
--json` and `daybook sync --json` render them, so scripts see one shape everywhere.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from daybook.model.fleet import HostStatus
from daybook.model.leadership import LEADER, STANDBY
from daybook.model.names import sorted_versions
from daybook.model.rollout import Rollout, rollout_summary
from daybook.views import (
    host_json,
    iso_time,
    master_json,
    rollout_json,
    sync_json,
    sync_tally_json,
)
from master.database import ResultsReader
from master.snapshot import FleetSnapshot

API_PREFIX = "/api/v1"
DEFAULT_SYNC_LIMIT = 20
MAX_SYNC_LIMIT = 500

ENDPOINTS = {
    f"{API_PREFIX}/fleet": "every known host: up or down, last seen, installed versions, last sync",
    f"{API_PREFIX}/hosts/HOST": "one host, with what the mappings give it and what it lacks",
    f"{API_PREFIX}/syncs?limit=N": f"recent syncs, newest first (default {DEFAULT_SYNC_LIMIT}, "
    f"at most {MAX_SYNC_LIMIT})",
    f"{API_PREFIX}/syncs/SYNC_ID": "one sync: every expected host's result and the missing ones; "
    "for a rolling sync, its batches, progress and why it halted",
    f"{API_PREFIX}/services": "per service: versions in the store, how many hosts have each, "
    "which hosts lag behind the newest",
    f"{API_PREFIX}/mappings": "the mapping table and the known hosts each pattern wins",
    "/metrics": "Prometheus metrics",
}


def index_document() -> dict[str, Any]:
    return {"api": 1, "endpoints": ENDPOINTS}


def _statuses(snapshot: FleetSnapshot, now: float) -> dict[str, HostStatus]:
    """The snapshot's hosts with `up` as of `now`."""
    return {
        host: replace(status, up=snapshot.is_up(status, now))
        for host, status in snapshot.hosts.items()
    }


def _failing(status: HostStatus) -> bool:
    return status.last_report is not None and not status.last_report.ok


def fleet_document(snapshot: FleetSnapshot, now: float) -> dict[str, Any]:
    statuses = _statuses(snapshot, now)
    up = sum(1 for status in statuses.values() if status.up)
    return {
        "epoch": snapshot.epoch,
        "now": iso_time(now),
        "down_after_s": snapshot.down_after_s,
        "state": (
            {"sync_id": snapshot.state_sync_id, "digest": snapshot.state_digest}
            if snapshot.state_digest is not None
            else None
        ),
        "counts": {
            "hosts": len(statuses),
            "up": up,
            "down": len(statuses) - up,
            "failing": sum(1 for status in statuses.values() if _failing(status)),
            "never_synced": sum(1 for s in statuses.values() if s.last_report is None),
        },
        "hosts": {host: host_json(status, now) for host, status in statuses.items()},
        **_leadership_document(snapshot),
    }


def _leadership_document(snapshot: FleetSnapshot) -> dict[str, Any]:
    """This master's role, the leader's address and term (null when none is known), and
    every master this one knows; a standby's hosts are what it collected as one."""
    leader = snapshot.leader
    return {
        "role": LEADER if snapshot.leading else STANDBY,
        "leader": (
            None
            if leader is None
            else {"address": leader.holder, "term": leader.number, "since": iso_time(leader.since)}
        ),
        "masters": [master_json(master) for master in snapshot.masters],
    }


def find_host(snapshot: FleetSnapshot, host: str) -> str | None:
    """The known host of this name (host names ignore case), or None."""
    if host in snapshot.hosts:
        return host
    lowered = host.lower()
    return next((known for known in snapshot.hosts if known.lower() == lowered), None)


def host_document(snapshot: FleetSnapshot, host: str, now: float) -> dict[str, Any] | None:
    """One known host; with `desired` (what the mappings give it) and `behind` (per desired
    service, the store's versions it has not installed). None for an unknown host."""
    known = find_host(snapshot, host)
    if known is None:
        return None
    status = replace(snapshot.hosts[known], up=snapshot.is_up(snapshot.hosts[known], now))
    document: dict[str, Any] = {"host": known, **host_json(status, now)}
    if snapshot.mappings is None:
        document["desired"] = None
        document["behind"] = None
        return document
    winner = snapshot.winners.get(known)
    services = winner.services if winner else ()
    document["desired"] = {
        "pattern": winner.pattern if winner else None,
        "services": list(services),
    }
    installed = status.last_report.installed if status.last_report else {}
    sizes = snapshot.sizes or {}
    document["behind"] = {
        service: sorted_versions(
            [v for v in sizes.get(service, {}) if v not in installed.get(service, ())]
        )
        for service in services
    }
    return document


def services_document(snapshot: FleetSnapshot) -> dict[str, Any]:
    """Per service: the store's versions and the newest, how many hosts have each version
    installed, the hosts mapped to it, those lacking its newest version, those failing it,
    and the version it is pinned to."""
    sizes = snapshot.sizes or {}
    installed: defaultdict[str, Counter[str]] = defaultdict(Counter)
    failing: defaultdict[str, list[str]] = defaultdict(list)
    for host, status in snapshot.hosts.items():
        report = status.last_report
        if report is None:
            continue
        for service, present in report.installed.items():
            installed[service].update(present)
        for service, result in report.services.items():
            if not result.ok:
                failing[service].append(host)
    mapped: defaultdict[str, list[str]] = defaultdict(list)
    for host, winner in snapshot.winners.items():
        for service in winner.services if winner else ():
            mapped[service].append(host)

    pins = snapshot.pins or {}
    documents: dict[str, Any] = {}
    for service in sorted(set(sizes) | set(installed) | set(mapped) | set(pins)):
        versions = sorted_versions(list(sizes.get(service, {})))
        newest = versions[-1] if versions else None
        counts = installed[service]

        def has_newest(host: str, service: str = service, newest: str | None = newest) -> bool:
            report = snapshot.hosts[host].last_report
            return report is not None and newest in report.installed.get(service, ())

        documents[service] = {
            "versions": versions,
            "newest": newest,
            "bytes": {version: sizes[service][version] for version in versions},
            "installed": {version: counts[version] for version in sorted_versions(list(counts))},
            "mapped_hosts": sorted(mapped[service]),
            "lagging": sorted(h for h in mapped[service] if newest and not has_newest(h)),
            "failing": sorted(failing[service]),
            # The version `current` points at fleet-wide (None: each host's newest).
            "pinned": pins[service].version if service in pins else None,
        }
    return {"ready": snapshot.sizes is not None, "services": documents}


def mappings_document(snapshot: FleetSnapshot) -> dict[str, Any]:
    """The mapping table, and for each pattern the known hosts it wins for."""
    mappings = snapshot.mappings or {}
    winning: defaultdict[str, list[str]] = defaultdict(list)
    unmatched: list[str] = []
    for host, winner in sorted(snapshot.winners.items()):
        if winner is None:
            unmatched.append(host)
        else:
            winning[winner.pattern].append(host)
    return {
        "ready": snapshot.mappings is not None,
        "mappings": {pattern: list(mappings[pattern]) for pattern in sorted(mappings)},
        "hosts": {pattern: winning[pattern] for pattern in sorted(mappings)},
        "unmatched": unmatched,
    }


def syncs_document(history: ResultsReader, limit: int) -> dict[str, Any]:
    tallies = history.sync_tallies(limit)
    return {"limit": limit, "syncs": [sync_tally_json(sync, tally) for sync, tally in tallies]}


def sync_document(
    history: ResultsReader, sync_id: str, rollouts: Sequence[Rollout] = ()
) -> dict[str, Any] | None:
    """One sync from the history; a rolling sync (which the master keeps in memory) with
    each of its batches' answers from the history."""
    rollout = next((r for r in rollouts if r.rollout_id == sync_id), None)
    if rollout is not None:
        batches = [
            sync for batch_id in rollout.batch_syncs if (sync := history.load_sync(batch_id))
        ]
        return rollout_json(rollout_summary(rollout, batches), rollout)
    sync = history.load_sync(sync_id)
    return None if sync is None else sync_json(sync)
