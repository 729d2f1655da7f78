"""The pin commands: `pin`, `unpin` and `rollback` set which version `current` points at on
every host, stored in the registry beside the mappings.

`pin` refuses, as bad input (exit 2), a version the store does not hold: hosts could never
install it. `rollback` with nothing older to go to is a failure (exit 1).

With `--batch`, `pin` and `rollback` do not write the pin themselves: they ask the master
for a rolling sync that carries it (see master/rollouts.py), so the new version reaches the
hosts batch by batch and a halted rollout leaves the hosts it never reached where they were.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from daybook.cli.backends import open_configured_registry, open_configured_store
from daybook.cli.fleet import add_rolling_options, refuse_rolling_options, rolling_sync
from daybook.cli.output import emit_json
from daybook.config import Settings
from daybook.errors import InputError
from daybook.model.names import check_release_version, check_service, sorted_versions
from daybook.model.pins import Pin, repinned, rollback_target
from daybook.model.rollout import parse_batch_size

if TYPE_CHECKING:
    from daybook.registry.base import PinUpdate


def register(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
    parents: list[argparse.ArgumentParser],
) -> None:
    pin = subparsers.add_parser(
        "pin", parents=parents, help="point every host's `current` of SERVICE at VERSION"
    )
    pin.add_argument("service")
    pin.add_argument("version")
    add_rolling_options(pin, what="the master carries the pin to the hosts")
    pin.add_argument("--json", action="store_true")
    pin.set_defaults(handler=cmd_pin)

    unpin = subparsers.add_parser(
        "unpin", parents=parents, help="let `current` follow the newest version again"
    )
    unpin.add_argument("service")
    unpin.add_argument("--json", action="store_true")
    unpin.set_defaults(handler=cmd_unpin)

    rollback = subparsers.add_parser(
        "rollback", parents=parents, help="pin the version before the current one"
    )
    rollback.add_argument("service")
    add_rolling_options(rollback, what="the master carries the rollback to the hosts")
    rollback.add_argument("--json", action="store_true")
    rollback.set_defaults(handler=cmd_rollback)


def cmd_pin(args: argparse.Namespace, settings: Settings) -> int:
    service, version = check_service(args.service), check_release_version(args.version)
    _check_batch(args)
    held = _store_versions(settings, service)
    if version not in held:
        offer = f"it holds {', '.join(held)}" if held else "it holds no version of it"
        raise InputError(
            f"{service} {version} is not in the store, so no host could run it; {offer}"
        )
    if args.batch is not None:
        return rolling_sync(args, settings, pin=Pin(service, version))
    _refuse_without_batch(args)
    before: list[Pin | None] = []

    def change(current: Pin | None) -> Pin:
        before[:] = [current]
        return repinned(service, version, current)

    _update(settings, service, change)
    was = before[0].version if before and before[0] is not None else None
    _report(args, service, version, f"{service}: pinned to {version}" + _was(was, version))
    return 0


def cmd_unpin(args: argparse.Namespace, settings: Settings) -> int:
    service = check_service(args.service)
    before: list[Pin | None] = []

    def change(current: Pin | None) -> None:
        before[:] = [current]

    _update(settings, service, change)
    was = before[0] if before else None
    if was is None:
        text = f"{service} was not pinned; its hosts run their newest version"
    else:
        text = f"{service}: unpinned (was {was.version}); its hosts go to their newest version"
    _report(args, service, None, text)
    return 0


def cmd_rollback(args: argparse.Namespace, settings: Settings) -> int:
    service = check_service(args.service)
    _check_batch(args)
    held = _store_versions(settings, service)
    if args.batch is not None:
        # The rollout claims the pin under check-and-set on the master; the target is
        # chosen from the pin as it stands now.
        old, target = rollback_target(service, held, _stored_pin(settings, service))
        if not args.json:
            print(f"{service}: rolling back {old} -> {target}, batch by batch")
        return rolling_sync(args, settings, pin=Pin(service, target))
    _refuse_without_batch(args)
    moved: list[tuple[str, str]] = []

    def change(current: Pin | None) -> Pin:
        # Chosen inside the check-and-set: a pin someone set meanwhile is what we step
        # back from, not the one we read before.
        old, target = rollback_target(service, held, current)
        moved[:] = [(old, target)]
        return repinned(service, target, current)

    _update(settings, service, change)
    old, target = moved[0]
    _report(args, service, target, f"{service}: rolled back {old} -> {target}", rolled_back=old)
    return 0


def _check_batch(args: argparse.Namespace) -> None:
    """A bad --batch is bad input, refused before the store or the registry is asked."""
    if args.batch is not None:
        parse_batch_size(args.batch)


def _refuse_without_batch(args: argparse.Namespace) -> None:
    """A pin without --batch is written at once: the rolling options have no meaning."""
    refuse_rolling_options(args)
    for flag, given in (("--target", args.target), ("--wait", args.wait or None)):
        if given is not None:
            raise InputError(f"{flag} goes with --batch: a pin without it reaches every host")


def _stored_pin(settings: Settings, service: str) -> Pin | None:
    registry = open_configured_registry(settings)
    try:
        return registry.read().pins.get(service)
    finally:
        registry.close()


def _store_versions(settings: Settings, service: str) -> list[str]:
    store = open_configured_store(settings)
    try:
        return sorted_versions(asset.version for asset in store.list_assets(service))
    finally:
        store.close()


def _update(settings: Settings, service: str, change: PinUpdate) -> Pin | None:
    registry = open_configured_registry(settings)
    try:
        return registry.update_pin(service, change)
    finally:
        registry.close()


def _was(was: str | None, version: str) -> str:
    if was is None:
        return " (was not pinned)"
    return " (already)" if was == version else f" (was {was})"


def _report(
    args: argparse.Namespace,
    service: str,
    pinned: str | None,
    text: str,
    *,
    rolled_back: str | None = None,
) -> None:
    if not args.json:
        print(text)
        return
    document: dict[str, str | None] = {"service": service, "pinned": pinned}
    if rolled_back is not None:
        document["from"] = rolled_back
    emit_json(document)
