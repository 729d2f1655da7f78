"""The asset commands: `push` uploads tarballs, `assets` lists them, `pull` installs them here."""

from __future__ import annotations

import argparse
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from daybook.cli.backends import open_configured_registry, open_configured_store
from daybook.cli.output import describe_lifecycle, emit_json
from daybook.config import Settings
from daybook.errors import AssetExistsError, DaybookError, InputError, StoreError
from daybook.model.names import (
    AssetRef,
    check_asset_filename,
    check_release_version,
    check_service,
)
from daybook.model.patterns import check_host, resolve_host

if TYPE_CHECKING:
    from daybook.install.releases import ReleaseKeeper
    from daybook.store.base import AssetStream, Store

# How long `push` waits for a master to hear of it: a push with no master near must not
# hang, and the master's store poll is the safety net.
NOTIFY_TIMEOUT_S = 1.0
# A failed hook's last lines that `pull` prints (all of its output tail is in --json).
HOOK_LINES_SHOWN = 5


def register(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
    parents: list[argparse.ArgumentParser],
) -> None:
    push = subparsers.add_parser("push", parents=parents, help="upload NAME-VERSION.tar.gz assets")
    push.add_argument("files", nargs="+", metavar="FILE")
    push.add_argument("--name", help="service name (one file only)")
    push.add_argument(
        "--version", dest="asset_version", metavar="VERSION", help="version (one file only)"
    )
    push.add_argument("--force", action="store_true", help="overwrite an existing version")
    push.add_argument("--json", action="store_true")
    push.set_defaults(handler=cmd_push)

    assets = subparsers.add_parser(
        "assets",
        parents=parents,
        help="list what the store holds; `assets prune` deletes its oldest versions",
        usage="%(prog)s [SERVICE] [--json]\n       %(prog)s prune [SERVICE] --keep N "
        "[--dry-run] [--ignore-hosts] [--json]",
    )
    # Words, not sub-commands: `assets SERVICE` must keep working for every service name.
    assets.add_argument("words", nargs="*", metavar="SERVICE", help="list only this service")
    assets.add_argument("--json", action="store_true")
    prune = assets.add_argument_group("assets prune")
    prune.add_argument(
        "--keep", type=int, metavar="N", help="keep the newest N versions of each service (N >= 1)"
    )
    prune.add_argument("--dry-run", action="store_true", help="delete nothing; say what would go")
    prune.add_argument(
        "--ignore-hosts",
        action="store_true",
        help="prune without asking the master which versions hosts run (pins still protect)",
    )
    assets.set_defaults(handler=cmd_assets)

    pull = subparsers.add_parser(
        "pull", parents=parents, help="install every missing version of this host's services"
    )
    pull.add_argument("--host", help="resolve as this host instead of the configured hostname")
    pull.add_argument("--dry-run", action="store_true", help="show what would be installed")
    pull.add_argument("--json", action="store_true")
    pull.set_defaults(handler=cmd_pull)


# -- progress on a terminal ----------------------------------------------------------------------


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


# -- push ----------------------------------------------------------------------------------------


def cmd_push(args: argparse.Namespace, settings: Settings) -> int:
    uploads = _checked_uploads([Path(f) for f in args.files], args.name, args.asset_version)
    store = open_configured_store(settings)
    rows: list[dict[str, Any]] = []
    try:
        for path, ref, sha256 in uploads:
            row = _push_one(store, path, ref, sha256, force=args.force)
            rows.append(row)
            if "error" in row:
                print(f"daybook: {ref.filename}: {row['error']}", file=sys.stderr)
            elif not args.json:
                print(f"{ref.filename}: {row['status']}")
    finally:
        store.close()
    if args.json:
        emit_json(rows)
    if any(row["status"] == "uploaded" for row in rows):
        tell_master(settings)
    return 1 if any(row["status"] == "failed" for row in rows) else 0


def tell_master(settings: Settings, what: str = "push") -> None:
    """Have a master list the store now, so the fleet acts on the change at once; without
    an answer the master's store poll finds it a little later."""
    from daybook.net.client import operator_client

    try:
        with operator_client(settings, timeout_s=NOTIFY_TIMEOUT_S) as client:
            client.store_changed()
    except (DaybookError, OSError) as exc:
        print(f"daybook: note: the master was not told of the {what} ({exc})", file=sys.stderr)


def _checked_uploads(
    files: list[Path], name: str | None, version: str | None
) -> list[tuple[Path, AssetRef, str]]:
    """Each file with its asset and SHA-256, after checking every file before uploading any,
    so bad input changes nothing."""
    from daybook.install.extract import check_archive

    if (name is not None or version is not None) and len(files) != 1:
        raise InputError("--name and --version apply to a single file")
    _keep_freed_blocks()
    uploads: list[tuple[Path, AssetRef, str]] = []
    for path in files:
        if not path.is_file():
            raise InputError(f"{path}: no such file")
        ref = _asset_ref_for(path, name, version)
        try:
            summary = check_archive(path)
        except DaybookError as exc:
            raise InputError(f"{path}: {exc}") from None
        except OSError as exc:  # unreadable, or an I/O error part-way
            raise InputError(f"cannot read {path}: {exc.strerror or exc}") from None
        uploads.append((path, ref, summary.sha256))
    return uploads


def _asset_ref_for(path: Path, name: str | None, version: str | None) -> AssetRef:
    # An empty --name or --version is checked (and refused), not taken for "not given".
    if name is not None and version is not None:
        return AssetRef(name, check_release_version(version))
    parsed = check_asset_filename(path.name)
    return AssetRef(
        parsed.service if name is None else name,
        check_release_version(parsed.version if version is None else version),
    )


def _push_one(
    store: Store, path: Path, ref: AssetRef, sha256: str, *, force: bool
) -> dict[str, Any]:
    """Upload one checked file unless the store holds the same bytes; its row of the report."""
    row: dict[str, Any] = {
        "name": ref.service,
        "version": ref.version,
        "size": path.stat().st_size,
        "sha256": sha256,
    }
    try:
        existing = store.stat(ref)
        if existing is not None and existing.sha256 == sha256 and not force:
            row["status"] = "unchanged"
            return row
        _upload(store, path, ref, sha256, overwrite=force)
        row["status"] = "uploaded"
    except AssetExistsError as exc:
        row.update(status="failed", error=f"{exc}; use --force to overwrite")
    except StoreError as exc:  # this file failed; the report still tells what the others did
        row.update(status="failed", error=str(exc))
    return row


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


# -- assets --------------------------------------------------------------------------------------


def cmd_assets(args: argparse.Namespace, settings: Settings) -> int:
    words: list[str] = args.words
    if words and words[0] == "prune":
        from daybook.cli.prune import cmd_prune

        return cmd_prune(args, settings, words[1:])
    if args.keep is not None or args.dry_run or args.ignore_hosts:
        raise InputError("--keep, --dry-run and --ignore-hosts go with `daybook assets prune`")
    if len(words) > 1:
        raise InputError(f"`daybook assets` lists one service, not {len(words)}")
    service = check_service(words[0]) if words else None
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


# -- pull ----------------------------------------------------------------------------------------


def cmd_pull(args: argparse.Namespace, settings: Settings) -> int:
    # Pull's own machinery loads with it, not with every other command.
    from daybook.install.installer import Installer
    from daybook.model.releases import pinned_versions
    from daybook.model.results import all_ok
    from daybook.views import service_results_json

    host = settings.hostname if args.host is None else check_host(args.host)
    registry = open_configured_registry(settings)
    try:
        snapshot = registry.read()
    finally:
        registry.close()
    resolution = resolve_host(host, snapshot.mappings)
    pinned = pinned_versions(snapshot.pins, resolution.services, host)
    keeper = release_keeper(settings)
    selections = keeper.selections(resolution.services, pinned)
    store = open_configured_store(settings)
    if not args.dry_run:
        _keep_freed_blocks()
    try:
        installer = Installer(
            store,
            settings.install_dir,
            max_parallel=settings.max_parallel_downloads,
            wrap_stream=(lambda ref, s: ProgressStream(s, ref.filename))
            if show_progress()
            else None,
        )
        outcome = installer.sync(resolution.services, selections, dry_run=args.dry_run)
        if not args.dry_run:
            outcome = keeper.settle_all(installer, outcome, pinned).results
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


def _keep_freed_blocks() -> None:
    """The command reads archives through the extractor and then ends: its heap may keep
    the buffers it frees (daybook.cmalloc)."""
    from daybook.cmalloc import find_mallopt, keep_freed_blocks

    keep_freed_blocks(os.environ, find_mallopt())


def release_keeper(settings: Settings) -> ReleaseKeeper:
    """The release lifecycle as this host's settings configure it (a no-op when off)."""
    from daybook.install.hooks import HookRunner
    from daybook.install.releases import ReleaseKeeper

    return ReleaseKeeper(
        settings.install_dir,
        settings.release_policy,
        HookRunner(settings.hooks_path, timeout_s=settings.hook_timeout_s),
        revert_on_hook_failure=settings.revert_on_hook_failure,
    )


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
        if parts:  # else the service failed as a whole, on the line below
            print(f"  {name}: {'; '.join(parts)}")
        for version, reason in result["failed"].items():
            print(f"  {name}: FAILED {version}: {reason}")
        if "error" in result:
            print(f"  {name}: FAILED: {result['error']}")
        lifecycle = describe_lifecycle(result)
        if lifecycle:
            print(f"  {name}: {lifecycle}")
        hook = result.get("hook")
        if hook is not None and not hook["ok"]:
            # The end of what the failed hook said, where an operator looks first.
            for line in hook["output"].splitlines()[-HOOK_LINES_SHOWN:]:
                print(f"    | {line}")
