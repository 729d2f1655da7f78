"""The `map` commands: change, list and resolve the host pattern mappings in the registry.

`map plan` and the `--dry-run` of the changing commands live in `daybook.cli.plan`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from daybook.cli import plan as cli_plan
from daybook.cli.backends import open_configured_registry
from daybook.cli.output import emit_json
from daybook.config import Settings
from daybook.errors import InputError
from daybook.model.mappings import unique_services
from daybook.model.patterns import Candidate, HostPattern, check_host, check_pattern, resolve_host


def register(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
    parents: list[argparse.ArgumentParser],
) -> None:
    mapping = subparsers.add_parser("map", parents=parents, help="manage host pattern mappings")
    map_sub = mapping.add_subparsers(title="map commands", metavar="ACTION", required=True)
    for action, text in (
        ("set", "replace the services of a pattern"),
        ("add", "add services to a pattern (creates it)"),
    ):
        cmd = map_sub.add_parser(action, parents=parents, help=text)
        cmd.add_argument("pattern")
        cmd.add_argument("services", nargs="+", metavar="SERVICE")
        cmd.add_argument("--json", action="store_true")
        _add_dry_run(cmd)
        cmd.set_defaults(handler=cmd_map_change, action=action)
    remove = map_sub.add_parser(
        "remove", parents=parents, help="remove services; with none, remove the pattern"
    )
    remove.add_argument("pattern")
    remove.add_argument("services", nargs="*", metavar="SERVICE")
    remove.add_argument("--json", action="store_true")
    _add_dry_run(remove)
    remove.set_defaults(handler=cmd_map_change, action="remove")
    listing = map_sub.add_parser("list", parents=parents, help="show every mapping")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(handler=cmd_map_list)
    resolve = map_sub.add_parser("resolve", parents=parents, help="which pattern wins for HOST")
    resolve.add_argument("host")
    resolve.add_argument(
        "--explain", action="store_true", help="show every matching pattern, most specific first"
    )
    resolve.add_argument("--json", action="store_true")
    resolve.set_defaults(handler=cmd_map_resolve)
    cli_plan.register(map_sub, parents)


def _add_dry_run(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="write nothing; show which known hosts would gain or lose which services",
    )
    cli_plan.add_host_flags(parser)


# -- set, add, remove ----------------------------------------------------------------------------


def cmd_map_change(args: argparse.Namespace, settings: Settings) -> int:
    pattern = check_pattern(args.pattern)
    services = unique_services(args.services)
    action: str = args.action
    if args.dry_run:
        return cli_plan.run_plan(
            args,
            settings,
            lambda current: cli_plan.propose_change(current, action, pattern, services),
        )
    if args.hosts or args.hosts_file:
        raise InputError("--hosts and --hosts-file go with --dry-run (they name hosts to plan for)")

    def change(current: tuple[str, ...]) -> tuple[str, ...]:
        return cli_plan.services_after(action, current, services)

    registry = open_configured_registry(settings)
    try:
        before = registry.read().mappings.get(pattern, ())
        after = registry.update(pattern, change)
    finally:
        registry.close()
    if args.json:
        emit_json({"pattern": pattern, "services": list(after)})
    else:
        _print_change(pattern, action, before, after)
    if action == "remove":
        _note_absent(pattern, services, before)
    return 0


def _print_change(pattern: str, action: str, before: Sequence[str], after: Sequence[str]) -> None:
    if after:
        print(f"{pattern} = {', '.join(after)}")
    elif action == "remove" and not before:
        print(f"{pattern} was not mapped; nothing to remove")
    else:
        print(f"{pattern} removed")


def _note_absent(pattern: str, removed: Sequence[str], before: Sequence[str]) -> None:
    """Say on stderr which services a `map remove` named that the pattern did not have."""
    absent = [s for s in removed if s not in before]
    if absent and before:
        print(
            f"note: {', '.join(absent)} {'was' if len(absent) == 1 else 'were'} not "
            f"mapped to {pattern}",
            file=sys.stderr,
        )


# -- list ----------------------------------------------------------------------------------------


def cmd_map_list(args: argparse.Namespace, settings: Settings) -> int:
    registry = open_configured_registry(settings)
    try:
        mappings = registry.read().mappings
    finally:
        registry.close()
    ordered = dict(sorted(mappings.items()))
    if args.json:
        emit_json({pattern: list(services) for pattern, services in ordered.items()})
        return 0
    if not ordered:
        print(f"no mappings in {registry.url}")
        return 0
    width = max(len(p) for p in ordered)
    for pattern, services in ordered.items():
        print(f"{pattern:<{width}}  {', '.join(services)}")
    return 0


# -- resolve -------------------------------------------------------------------------------------


def cmd_map_resolve(args: argparse.Namespace, settings: Settings) -> int:
    host = check_host(args.host)
    registry = open_configured_registry(settings)
    try:
        mappings = registry.read().mappings
    finally:
        registry.close()
    resolution = resolve_host(host, mappings, explain=args.explain)
    if args.json:
        document: dict[str, Any] = {
            "host": host,
            "pattern": resolution.pattern,
            "services": list(resolution.services),
        }
        if args.explain:
            document["candidates"] = [
                {"pattern": c.pattern, "services": list(c.services)} for c in resolution.candidates
            ]
        emit_json(document)
        return 0
    if resolution.pattern is None:
        print(f"{host}: no pattern matches")
    else:
        print(f"{host}: {resolution.pattern} -> {', '.join(resolution.services) or '(none)'}")
    if args.explain:
        _print_explain(host, resolution.candidates, len(mappings))
    return 0


def _print_explain(host: str, candidates: Sequence[Candidate], pattern_count: int) -> None:
    """Every matching pattern, most specific first, and why each loses to the winner."""
    if not candidates:
        print(f"none of the {pattern_count} pattern(s) matches {host}, so it gets no services")
        return
    print(
        f"{len(candidates)} of {pattern_count} pattern(s) match {host}, most specific first; "
        "the first wins and only its services apply (patterns are not merged):"
    )
    winner = HostPattern(candidates[0].pattern)
    width = max(len(c.pattern) for c in candidates)
    for rank, candidate in enumerate(candidates, 1):
        hp = HostPattern(candidate.pattern)
        services = ", ".join(candidate.services) or "(no services)"
        if rank == 1:
            why = (
                f"wins: {hp.literal_chars} literal character(s), {hp.star_count} star(s), "
                f"{len(hp.literal_prefix)} before the first star"
            )
        else:
            why = f"loses: {_why_less_specific(hp, winner)}"
        print(f"  {rank}. {candidate.pattern:<{width}}  -> {services}")
        print(f"     {why}")
    print(
        "specificity: more literal characters, then fewer stars, then a longer literal "
        "prefix, then name order"
    )


def _why_less_specific(loser: HostPattern, winner: HostPattern) -> str:
    if loser.literal_chars != winner.literal_chars:
        return f"fewer literal characters ({loser.literal_chars} < {winner.literal_chars})"
    if loser.star_count != winner.star_count:
        return f"more stars ({loser.star_count} > {winner.star_count})"
    if len(loser.literal_prefix) != len(winner.literal_prefix):
        return (
            f"shorter literal prefix ({len(loser.literal_prefix)} < "
            f"{len(winner.literal_prefix)} characters before the first star)"
        )
    return f"as specific; {winner.text!r} comes first in name order"
