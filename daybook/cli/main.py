"""The `daybook` command: argument parsing, output, and errors turned into exit codes."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from daybook import __version__
from daybook.cli import plan as cli_plan
from daybook.cli.output import emit_json
from daybook.config import Settings, load_settings
from daybook.errors import AssetExistsError, DaybookError, InputError
from daybook.logs import configure_logging, verbosity_level
from daybook.model.mappings import unique_services
from daybook.model.names import AssetRef, check_asset_filename, check_service
from daybook.model.patterns import Candidate, HostPattern, check_host, check_pattern, resolve_host
from daybook.model.results import all_ok
from daybook.views import service_results_json

if TYPE_CHECKING:
    from daybook.registry.base import Registry
    from daybook.store.base import AssetStream, Store

Handler = Callable[[argparse.Namespace, Settings], int]
log = logging.getLogger("daybook")

# Flags every subcommand accepts, mapped to the setting each overrides.
_COMMON_FLAGS: dict[str, tuple[str, str]] = {
    "--data-dir": ("data_dir", "node state: results db, keys, caches, embedded store"),
    "--store": ("store", "s3://BUCKET[/PREFIX] or file:///DIR"),
    "--registry": ("registry", "consul://HOST:PORT[/KEY_PREFIX] or file:///PATH"),
    "--install-dir": ("install_dir", "where <service>/<version>/ trees go"),
    "--hostname": ("hostname", "this host's name for matching"),
    "--master": ("master", "host of the master"),
    "--port": ("port", "the master's publish port (results, control, HTTP use the next three)"),
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(verbosity_level(getattr(args, "verbose", 0)))
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        settings = load_settings(
            config_path=getattr(args, "config", None),
            overrides={
                setting: getattr(args, setting, None) for setting, _ in _COMMON_FLAGS.values()
            },
        )
        return handler(args, settings)
    except DaybookError as exc:
        print(f"daybook: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("daybook: interrupted", file=sys.stderr)
        return 130


def main_entry() -> None:
    sys.exit(main())


def build_parser() -> argparse.ArgumentParser:
    # Defaults are SUPPRESS so a flag given before the subcommand is not reset by the
    # subcommand's own copy of the same flag.
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("settings")
    group.add_argument(
        "--config",
        metavar="PATH",
        default=argparse.SUPPRESS,
        help="config file (TOML); else $DAYBOOK_CONFIG, else /etc/daybook/daybook.toml",
    )
    for flag, (setting, text) in _COMMON_FLAGS.items():
        group.add_argument(flag, dest=setting, default=argparse.SUPPRESS, help=text)
    group.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=argparse.SUPPRESS,
        help="more log output (-vv for debug)",
    )

    parser = argparse.ArgumentParser(
        prog="daybook",
        description="Pull-based deployment: service tarballs in S3, host patterns in Consul.",
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=f"daybook {__version__}")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")

    push = sub.add_parser("push", parents=[common], help="upload NAME-VERSION.tar.gz assets")
    push.add_argument("files", nargs="+", metavar="FILE")
    push.add_argument("--name", help="service name (one file only)")
    push.add_argument(
        "--version", dest="asset_version", metavar="VERSION", help="version (one file only)"
    )
    push.add_argument("--force", action="store_true", help="overwrite an existing version")
    push.add_argument("--json", action="store_true")
    push.set_defaults(handler=cmd_push)

    assets = sub.add_parser("assets", parents=[common], help="list what the store holds")
    assets.add_argument("service", nargs="?")
    assets.add_argument("--json", action="store_true")
    assets.set_defaults(handler=cmd_assets)

    pull = sub.add_parser(
        "pull", parents=[common], help="install every missing version of this host's services"
    )
    pull.add_argument("--host", help="resolve as this host instead of the configured hostname")
    pull.add_argument("--dry-run", action="store_true", help="show what would be installed")
    pull.add_argument("--json", action="store_true")
    pull.set_defaults(handler=cmd_pull)

    mapping = sub.add_parser("map", parents=[common], help="manage host pattern mappings")
    map_sub = mapping.add_subparsers(title="map commands", metavar="ACTION", required=True)
    for action, text in (
        ("set", "replace the services of a pattern"),
        ("add", "add services to a pattern (creates it)"),
    ):
        cmd = map_sub.add_parser(action, parents=[common], help=text)
        cmd.add_argument("pattern")
        cmd.add_argument("services", nargs="+", metavar="SERVICE")
        cmd.add_argument("--json", action="store_true")
        _add_dry_run(cmd)
        cmd.set_defaults(handler=cmd_map_change, action=action)
    remove = map_sub.add_parser(
        "remove", parents=[common], help="remove services; with none, remove the pattern"
    )
    remove.add_argument("pattern")
    remove.add_argument("services", nargs="*", metavar="SERVICE")
    remove.add_argument("--json", action="store_true")
    _add_dry_run(remove)
    remove.set_defaults(handler=cmd_map_change, action="remove")
    listing = map_sub.add_parser("list", parents=[common], help="show every mapping")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(handler=cmd_map_list)
    resolve = map_sub.add_parser("resolve", parents=[common], help="which pattern wins for HOST")
    resolve.add_argument("host")
    resolve.add_argument(
        "--explain", action="store_true", help="show every matching pattern, most specific first"
    )
    resolve.add_argument("--json", action="store_true")
    resolve.set_defaults(handler=cmd_map_resolve)
    cli_plan.register(map_sub, [common])

    try:
        from daybook.cli import fleet as cli_fleet
    except ImportError:  # pragma: no cover - the fleet layer ships with the same package
        pass
    else:
        cli_fleet.register(sub, [common])
    return parser


def _add_dry_run(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="write nothing; show which known hosts would gain or lose which services",
    )
    cli_plan.add_host_flags(parser)


# -- helpers shared by the commands ------------------------------------------------------------


def open_configured_store(settings: Settings) -> Store:
    from daybook.store.base import open_store

    return open_store(settings.store)


def open_configured_registry(settings: Settings) -> Registry:
    from daybook.registry.base import open_registry

    return open_registry(settings.registry, key_prefix=settings.consul_key_prefix)


def show_progress() -> bool:
    return sys.stderr.isatty()


class ProgressStream:
    """A store stream that advances a progress bar as the installer reads it."""

    def __init__(self, inner: AssetStream, label: str) -> None:
        from tqdm import tqdm

        self._inner = inner
        self.size = inner.size
        self.sha256 = inner.sha256
        self._bar = tqdm(total=inner.size, desc=label, unit="B", unit_scale=True, leave=False)

    def read(self, size: int = -1, /) -> bytes:
        chunk = self._inner.read(size)
        self._bar.update(len(chunk))
        return chunk

    def close(self) -> None:
        self._bar.close()
        self._inner.close()


# -- push and assets ---------------------------------------------------------------------------


def cmd_push(args: argparse.Namespace, settings: Settings) -> int:
    from daybook.install.extract import check_archive

    files = [Path(f) for f in args.files]
    if (args.name or args.asset_version) and len(files) != 1:
        raise InputError("--name and --version apply to a single file")
    # Check every file before uploading any, so bad input changes nothing.
    plan: list[tuple[Path, AssetRef, str]] = []
    for path in files:
        if not path.is_file():
            raise InputError(f"{path}: no such file")
        ref = _asset_ref_for(path, args.name, args.asset_version)
        try:
            summary = check_archive(path)
        except DaybookError as exc:
            raise InputError(f"{path}: {exc}") from None
        plan.append((path, ref, summary.sha256))

    store = open_configured_store(settings)
    rows: list[dict[str, Any]] = []
    failed = False
    try:
        for path, ref, sha256 in plan:
            row: dict[str, Any] = {
                "name": ref.service,
                "version": ref.version,
                "size": path.stat().st_size,
                "sha256": sha256,
            }
            existing = store.stat(ref)
            if existing is not None and existing.sha256 == sha256 and not args.force:
                row["status"] = "unchanged"
            else:
                try:
                    _upload(store, path, ref, sha256, overwrite=args.force)
                    row["status"] = "uploaded"
                except AssetExistsError as exc:
                    row.update(status="failed", error=f"{exc}; use --force to overwrite")
                    failed = True
            rows.append(row)
            if not args.json:
                note = row.get("error") or row["status"]
                print(f"{ref.filename}: {note}")
    finally:
        store.close()
    if args.json:
        emit_json(rows)
    return 1 if failed else 0


def _asset_ref_for(path: Path, name: str | None, version: str | None) -> AssetRef:
    if name and version:
        return AssetRef(name, version)
    parsed = check_asset_filename(path.name)
    return AssetRef(name or parsed.service, version or parsed.version)


def _upload(store: Store, path: Path, ref: AssetRef, sha256: str, *, overwrite: bool) -> None:
    if not show_progress():
        store.upload(path, ref, sha256=sha256, overwrite=overwrite)
        return
    from tqdm import tqdm

    with tqdm(
        total=path.stat().st_size, desc=ref.filename, unit="B", unit_scale=True, leave=False
    ) as bar:

        def advance(byte_count: int) -> None:
            bar.update(byte_count)

        store.upload(path, ref, sha256=sha256, overwrite=overwrite, progress=advance)


def cmd_assets(args: argparse.Namespace, settings: Settings) -> int:
    service = check_service(args.service) if args.service else None
    store = open_configured_store(settings)
    try:
        assets = store.list_assets(service)
    finally:
        store.close()
    if args.json:
        emit_json(
            [
                {
                    "name": a.service,
                    "version": a.version,
                    "size": a.size,
                    "modified": _iso(a.modified),
                    "sha256": a.sha256,
                    "file": a.ref.filename,
                }
                for a in assets
            ]
        )
        return 0
    if not assets:
        print("no assets" + (f" for {service}" if service else "") + f" in {store.url}")
        return 0
    width = max(len(a.service) for a in assets)
    for a in assets:
        print(f"{a.service:<{width}}  {a.version:<12} {_human_size(a.size):>9}  {_iso(a.modified)}")
    return 0


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds")


def _human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


# -- pull --------------------------------------------------------------------------------------


def cmd_pull(args: argparse.Namespace, settings: Settings) -> int:
    from daybook.install.installer import Installer

    host = check_host(args.host) if args.host else settings.hostname
    registry = open_configured_registry(settings)
    try:
        snapshot = registry.read()
    finally:
        registry.close()
    resolution = resolve_host(host, snapshot.mappings)
    store = open_configured_store(settings)
    try:
        installer = Installer(
            store,
            settings.install_dir,
            max_parallel=settings.max_parallel_downloads,
            wrap_stream=(lambda ref, s: ProgressStream(s, ref.filename))
            if show_progress()
            else None,
        )
        outcome = installer.sync(resolution.services, dry_run=args.dry_run)
    finally:
        store.close()
    document = {
        "host": host,
        "pattern": resolution.pattern,
        "ok": all_ok(outcome),
        "services": service_results_json(outcome),
    }
    if args.dry_run:
        document["dry_run"] = True
    if args.json:
        emit_json(document)
    else:
        _print_pull(document, settings.install_dir)
    return 0 if all_ok(outcome) else 1


def _print_pull(document: dict[str, Any], install_dir: Path) -> None:
    host, pattern = document["host"], document["pattern"]
    if pattern is None:
        print(f"{host}: no pattern matches; nothing to install")
        return
    verb = "would install" if document.get("dry_run") else "installed"
    print(f"{host}: pattern {pattern} -> {len(document['services'])} service(s) in {install_dir}")
    for name, result in document["services"].items():
        parts = []
        if result["installed"]:
            parts.append(f"{verb} {', '.join(result['installed'])}")
        if result["present"]:
            parts.append(f"present {', '.join(result['present'])}")
        if not result["installed"] and not result["present"] and "error" not in result:
            parts.append("no versions in the store")
        print(f"  {name}: {'; '.join(parts)}" if parts else f"  {name}:")
        for version, reason in result["failed"].items():
            print(f"  {name}: FAILED {version}: {reason}")
        if "error" in result:
            print(f"  {name}: FAILED: {result['error']}")


# -- map ---------------------------------------------------------------------------------------


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
    elif after:
        print(f"{pattern} = {', '.join(after)}")
    elif action == "remove" and not before:
        print(f"{pattern} was not mapped; nothing to remove")
    else:
        print(f"{pattern} removed")
    if action == "remove":
        absent = [s for s in services if s not in before]
        if absent and before:
            print(
                f"note: {', '.join(absent)} {'was' if len(absent) == 1 else 'were'} not "
                f"mapped to {pattern}",
                file=sys.stderr,
            )
    return 0


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
