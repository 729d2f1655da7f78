"""`daybook assets prune`: delete the oldest versions from the store, never one that a pin
names nor one that a host's `current` points at (as the master last heard)."""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from daybook.cli.assets import tell_master
from daybook.cli.backends import open_configured_registry, open_configured_store
from daybook.cli.output import emit_json
from daybook.config import Settings
from daybook.errors import DaybookError, FleetError, InputError
from daybook.model.names import AssetRef, check_service
from daybook.model.pins import Pin
from daybook.model.pruning import PrunePlan, check_keep, plan_prune, protected_versions

if TYPE_CHECKING:
    from daybook.store.base import Store


def cmd_prune(args: argparse.Namespace, settings: Settings, words: list[str]) -> int:
    if len(words) > 1:
        raise InputError(f"`daybook assets prune` takes one SERVICE at most, not {len(words)}")
    service = check_service(words[0]) if words else None
    if args.keep is None:
        raise InputError("`daybook assets prune` needs --keep N: how many versions to keep")
    keep = check_keep(args.keep)
    store = open_configured_store(settings)
    try:
        held: defaultdict[str, list[str]] = defaultdict(list)
        for asset in store.list_assets(service):
            held[asset.service].append(asset.version)
        # Every fact gathered before anything is deleted: a refusal changes nothing.
        pins = _pins(settings) if held else {}
        running = {} if args.ignore_hosts or not held else _current_on_hosts(settings)
        plans = [
            plan_prune(
                name, versions, keep, protected_versions(pins.get(name), running.get(name, ()))
            )
            for name, versions in sorted(held.items())
        ]
        failed = {} if args.dry_run else _delete(store, plans)
    finally:
        store.close()
    if not args.dry_run and any(plan.removed for plan in plans):
        tell_master(settings, "prune")
    if args.json:
        emit_json(_document(plans, failed, dry_run=args.dry_run))
    else:
        _print(plans, failed, dry_run=args.dry_run, service=service)
    return 1 if failed else 0


def _protected(
    pins: Mapping[str, Pin], running: Mapping[str, set[str]], service: str
) -> dict[str, str]:
    return protected_versions(pins.get(service), running.get(service, ()))


def _pins(settings: Settings) -> Mapping[str, Pin]:
    registry = open_configured_registry(settings)
    try:
        return registry.read().pins
    finally:
        registry.close()


def _current_on_hosts(settings: Settings) -> Mapping[str, set[str]]:
    """Per service, every version some host last reported its `current` at."""
    from daybook.net.client import operator_client

    running: defaultdict[str, set[str]] = defaultdict(set)
    try:
        with operator_client(settings) as client:
            fleet = client.fleet_status()
    except (DaybookError, OSError) as exc:
        raise FleetError(
            f"cannot ask the master at {settings.master} which versions hosts run, so "
            f"nothing was deleted ({exc}); --ignore-hosts prunes on pins alone"
        ) from None
    for status in fleet.hosts.values():
        report = status.last_report
        for name, result in (report.services if report else {}).items():
            if result.current is not None:
                running[name].add(result.current)
    return running


def _delete(store: Store, plans: list[PrunePlan]) -> dict[AssetRef, str]:
    """Delete what the plans remove; each failure with why (the others still go)."""
    failed: dict[AssetRef, str] = {}
    for plan in plans:
        for version in plan.removed:
            ref = AssetRef(plan.service, version)
            try:
                store.delete(ref)
            except DaybookError as exc:
                failed[ref] = str(exc)
    return failed


def _document(
    plans: list[PrunePlan], failed: Mapping[AssetRef, str], *, dry_run: bool
) -> dict[str, Any]:
    removed = [
        {"name": plan.service, "version": version}
        for plan in plans
        for version in plan.removed
        if AssetRef(plan.service, version) not in failed
    ]
    kept = [
        {"name": plan.service, "version": kept.version, "why": kept.why}
        for plan in plans
        for kept in plan.kept
    ]
    document: dict[str, Any] = {"removed": removed, "kept": kept, "dry_run": dry_run}
    if failed:
        document["failed"] = [
            {"name": ref.service, "version": ref.version, "error": error}
            for ref, error in failed.items()
        ]
    return document


def _print(
    plans: list[PrunePlan],
    failed: Mapping[AssetRef, str],
    *,
    dry_run: bool,
    service: str | None,
) -> None:
    if not plans:
        print("no assets" + (f" for {service}" if service else "") + " in the store")
        return
    verb = "would delete" if dry_run else "deleted"
    for plan in plans:
        gone = [v for v in plan.removed if AssetRef(plan.service, v) not in failed]
        kept = ", ".join(f"{k.version} ({k.why})" for k in plan.kept)
        print(f"{plan.service}: {verb} {', '.join(gone) or 'nothing'}; kept {kept}")
    for ref, error in failed.items():
        print(f"daybook: could not delete {ref}: {error}", file=sys.stderr)
