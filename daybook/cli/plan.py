"""`daybook map plan` and `map set|add|remove --dry-run`: what a mapping change would do to
the known hosts, shown before anything is written.

The known hosts come from the master's status; `--hosts`/`--hosts-file` add hosts, and are
what the plan runs against when no master answers (the output says so). The computation
itself is `daybook.model.plan`, pure and tested on its own.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from daybook.cli.backends import open_configured_registry
from daybook.cli.output import emit_json
from daybook.config import Settings
from daybook.errors import DaybookError, FleetError, InputError
from daybook.model.mappings import MappingTable, unique_services
from daybook.model.patterns import check_host, check_pattern
from daybook.model.pins import Pin
from daybook.model.plan import HostChange, MappingPlan, plan_mappings, with_pattern

# A plan should not hang on a master that is down: it falls back to the given hosts.
MASTER_TIMEOUT_S = 2.0
MAX_HOSTS_FILE_BYTES = 64 * 1024 * 1024


def services_after(action: str, current: Sequence[str], services: Sequence[str]) -> tuple[str, ...]:
    """The services a pattern has after `map set|add|remove` with `services`."""
    if action == "set":
        return tuple(services)
    if action == "add":
        return tuple(current) + tuple(s for s in services if s not in current)
    if not services:
        return ()
    return tuple(s for s in current if s not in services)


# -- argument parsing ---------------------------------------------------------------------------


def add_host_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("known hosts (the master's, plus these)")
    group.add_argument(
        "--hosts",
        metavar="H1,H2",
        action="append",
        help="hosts to plan for besides the master's; all there is when no master answers",
    )
    group.add_argument(
        "--hosts-file", metavar="FILE", help="the same, one host per line (# starts a comment)"
    )


def register(
    map_sub: argparse._SubParsersAction[argparse.ArgumentParser],
    parents: list[argparse.ArgumentParser],
) -> None:
    plan = map_sub.add_parser(
        "plan",
        parents=parents,
        help="show which known hosts a mapping change would give or take services",
        description="Preview a mapping change against the known hosts (from the master's "
        "status, plus --hosts/--hosts-file) without writing anything: which hosts would gain "
        "or lose which services, and which would change winning pattern.",
    )
    changes = plan.add_subparsers(title="proposed change", metavar="CHANGE", required=True)
    for action, text in (
        ("set", "replace the services of a pattern"),
        ("add", "add services to a pattern"),
        ("remove", "remove services from a pattern; with none, the whole pattern"),
    ):
        change = changes.add_parser(action, parents=parents, help=text)
        change.add_argument("pattern")
        change.add_argument("services", nargs="+" if action != "remove" else "*", metavar="SERVICE")
        add_host_flags(change)
        change.add_argument("--json", action="store_true")
        change.set_defaults(handler=cmd_map_plan, action=action)
    table = changes.add_parser(
        "file",
        parents=parents,
        help="a whole proposed table, as `map list --json` prints it",
        description="Plan replacing the whole mapping table with the one in FILE: a JSON "
        'object of pattern -> list of services, e.g. {"web-*": ["nginx", "app"]}; "-" reads '
        "standard input.",
    )
    table.add_argument("file", metavar="FILE")
    add_host_flags(table)
    table.add_argument("--json", action="store_true")
    table.set_defaults(handler=cmd_map_plan, action="file")


# -- the known hosts -------------------------------------------------------------------------


@dataclass(frozen=True)
class KnownHosts:
    """The hosts to plan against, and where they came from."""

    hosts: tuple[str, ...]
    given: tuple[str, ...]
    # None when the master did not answer; then `master_error` says why.
    from_master: tuple[str, ...] | None
    down: frozenset[str]
    master: str | None
    master_error: str | None

    def describe(self) -> str:
        count = len(self.hosts)
        if self.from_master is None:
            return (
                f"the master did not answer ({self.master_error}); planning against the "
                f"{count} host(s) given with --hosts/--hosts-file only"
            )
        extra = len(set(self.given) - set(self.from_master))
        text = f"against {count} known host(s): {len(self.from_master)} from the master"
        if self.down:
            text += f" ({len(self.down)} of them down)"
        if extra:
            text += f", {extra} more given with --hosts/--hosts-file"
        return text

    def to_json(self) -> dict[str, Any]:
        return {
            "count": len(self.hosts),
            "from_master": None if self.from_master is None else len(self.from_master),
            "given": len(self.given),
            "down": sorted(self.down),
            "master": self.master,
            "master_error": self.master_error,
        }


def given_hosts(flags: Sequence[str] | None, hosts_file: str | None) -> tuple[str, ...]:
    names: list[str] = []
    for flag in flags or ():
        names += [name for name in flag.replace(",", " ").split() if name]
    if hosts_file:
        path = Path(hosts_file)
        try:
            if path.stat().st_size > MAX_HOSTS_FILE_BYTES:
                raise InputError(f"{path}: larger than {MAX_HOSTS_FILE_BYTES} bytes")
            text = path.read_text()
        except OSError as exc:
            raise InputError(f"cannot read the hosts file {path}: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise InputError(f"the hosts file {path} is not text") from None
        for line in text.splitlines():
            names += line.split("#", 1)[0].split()
    return tuple(dict.fromkeys(check_host(name) for name in names))


def find_known_hosts(settings: Settings, given: tuple[str, ...]) -> KnownHosts:
    """The master's hosts plus `given`; only `given` when the master does not answer."""
    from daybook.net.client import operator_client

    endpoint: str | None = None
    try:
        # The same way in as `daybook status`: the local socket, or the control port.
        with operator_client(settings, MASTER_TIMEOUT_S) as client:
            endpoint = client.endpoint
            status = client.fleet_status()
    except DaybookError as exc:
        if not given:
            raise FleetError(
                f"no known hosts to plan against: {exc}; name them with --hosts or --hosts-file"
            ) from None
        return KnownHosts(given, given, None, frozenset(), endpoint, str(exc))
    from_master = tuple(status.hosts)
    down = frozenset(host for host, entry in status.hosts.items() if not entry.up)
    hosts = tuple(dict.fromkeys((*from_master, *given)))
    return KnownHosts(hosts, given, from_master, down, endpoint, None)


# -- the proposed table -------------------------------------------------------------------------


@dataclass(frozen=True)
class Proposal:
    """A proposed table, and how to describe the change from the current one."""

    mappings: MappingTable
    change: dict[str, Any]
    headline: str


def propose_change(
    current: MappingTable, action: str, pattern: str, services: tuple[str, ...]
) -> Proposal:
    before = _services_of(current, pattern)
    after = services_after(action, before, services)
    if not after:
        headline = f"remove {pattern}" + (f" (was: {', '.join(before)})" if before else "")
        if not before:
            headline += " (not mapped now)"
    else:
        headline = f"{pattern} = {', '.join(after)}"
        headline += f" (was: {', '.join(before)})" if before else " (a new pattern)"
    change = {"action": action, "pattern": pattern, "before": list(before), "after": list(after)}
    return Proposal(with_pattern(current, pattern, after), change, headline)


def _services_of(mappings: Mapping[str, Sequence[str]], pattern: str) -> tuple[str, ...]:
    for key, services in mappings.items():
        if key.lower() == pattern:
            return tuple(services)
    return ()


def read_proposed_table(source: str) -> MappingTable:
    """A whole table from a JSON file (or `-`): pattern -> list of services, all validated."""
    try:
        text = sys.stdin.read() if source == "-" else Path(source).read_text()
        document: Any = json.loads(text)
    except OSError as exc:
        raise InputError(f"cannot read {source}: {exc.strerror}") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputError(f"{source} is not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise InputError(f"{source}: expected a JSON object of pattern -> list of services")
    table: MappingTable = {}
    for pattern, services in document.items():
        normalised = check_pattern(pattern)
        if not isinstance(services, list) or not all(isinstance(s, str) for s in services):
            raise InputError(f"{source}: the services of {pattern!r} are not a list of names")
        if normalised in table:
            raise InputError(f"{source}: pattern {normalised!r} appears twice")
        names = unique_services(services)
        if names:
            table[normalised] = names
    return table


def propose_table(current: MappingTable, source: str) -> Proposal:
    proposed = read_proposed_table(source)
    now = {pattern.lower(): tuple(services) for pattern, services in current.items()}
    added = sorted(set(proposed) - set(now))
    removed = sorted(set(now) - set(proposed))
    changed = sorted(p for p in set(now) & set(proposed) if now[p] != proposed[p])
    parts = [f"{len(added)} pattern(s) added", f"{len(removed)} removed", f"{len(changed)} changed"]
    change = {
        "action": "file",
        "file": source,
        "patterns": {"added": added, "removed": removed, "changed": changed},
    }
    return Proposal(proposed, change, f"the table in {source}: {', '.join(parts)}")


# -- the commands -------------------------------------------------------------------------------


def cmd_map_plan(args: argparse.Namespace, settings: Settings) -> int:
    action: str = args.action
    if action == "file":
        return run_plan(args, settings, lambda current: propose_table(current, args.file))
    pattern = check_pattern(args.pattern)
    services = unique_services(args.services)
    return run_plan(
        args, settings, lambda current: propose_change(current, action, pattern, services)
    )


def run_plan(
    args: argparse.Namespace,
    settings: Settings,
    propose: Callable[[MappingTable], Proposal],
) -> int:
    """Read the current table, build the proposal, plan it against the known hosts, print."""
    given = given_hosts(args.hosts, args.hosts_file)
    registry = open_configured_registry(settings)
    try:
        snapshot = registry.read()
    finally:
        registry.close()
    current = snapshot.mappings
    proposal = propose(current)
    known = find_known_hosts(settings, given)
    plan = plan_mappings(current, proposal.mappings, known.hosts)
    pins = _pins_of(snapshot.pins, current, proposal.mappings)
    document = plan_json(proposal, known, plan, pins)
    if args.json:
        emit_json(document)
    else:
        print_plan(proposal, known, plan, pins)
    return 0


def _pins_of(pins: Mapping[str, Pin], *tables: Mapping[str, Sequence[str]]) -> dict[str, str]:
    """The pinned version of every service the current or the proposed table maps: a host
    gaining a pinned service runs that version, not its newest."""
    mapped = {service for table in tables for services in table.values() for service in services}
    return {service: pins[service].version for service in sorted(mapped) if service in pins}


def plan_json(
    proposal: Proposal, known: KnownHosts, plan: MappingPlan, pins: Mapping[str, str]
) -> dict[str, Any]:
    return {
        "dry_run": True,
        "change": proposal.change,
        "hosts": known.to_json(),
        "changes": [
            {
                "host": change.host,
                "up": None if known.from_master is None else change.host not in known.down,
                "pattern_before": change.pattern_before,
                "pattern_after": change.pattern_after,
                "services_before": list(change.services_before),
                "services_after": list(change.services_after),
                "gained": list(change.gained),
                "lost": list(change.lost),
            }
            for change in plan.changes
        ],
        "unchanged": plan.unchanged,
        "gained": _by_service(plan, gained=True),
        "lost": _by_service(plan, gained=False),
        "pins": dict(pins),
    }


def _by_service(plan: MappingPlan, *, gained: bool) -> dict[str, list[str]]:
    services: dict[str, list[str]] = {}
    for change in plan.changes:
        for service in change.gained if gained else change.lost:
            services.setdefault(service, []).append(change.host)
    return dict(sorted(services.items()))


def print_plan(
    proposal: Proposal, known: KnownHosts, plan: MappingPlan, pins: Mapping[str, str]
) -> None:
    print(f"plan: {proposal.headline}")
    print(known.describe())
    if not plan.changes:
        print(f"no known host would change ({plan.unchanged} unchanged)")
    else:
        print(f"{len(plan.changes)} host(s) would change, {plan.unchanged} unchanged:")
        labels = {
            c.host: c.host + (" (down)" if c.host in known.down else "") for c in plan.changes
        }
        width = max(map(len, labels.values()))
        for change in plan.changes:
            print(f"  {labels[change.host]:<{width}}  {_describe(change)}")
        gained, lost = _by_service(plan, gained=True), _by_service(plan, gained=False)
        if gained or lost:
            print("by service:")
            for service in sorted(set(gained) | set(lost)):
                counts = _counted(gained.get(service), "+") + _counted(lost.get(service), "-")
                print(f"  {service}:{counts}")
    if pins:
        pinned = ", ".join(f"{service} {version}" for service, version in pins.items())
        print(f"pinned (hosts run these, not their newest): {pinned}")
    print("nothing was written (dry run)")


def _describe(change: HostChange) -> str:
    parts = []
    if change.pattern_changed:
        parts.append(
            f"{change.pattern_before or '(no pattern)'} -> {change.pattern_after or '(no pattern)'}"
        )
    if change.gained:
        parts.append(f"gains {', '.join(change.gained)}")
    if change.lost:
        parts.append(f"loses {', '.join(change.lost)}")
    if not change.gained and not change.lost:
        parts.append("same services")
    return "; ".join(parts)


def _counted(hosts: Iterable[str] | None, sign: str) -> str:
    if not hosts:
        return ""
    names = list(hosts)
    shown = ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")
    return f" {sign}{len(names)} ({shown})"
