"""The `daybook` command: the parser assembled from each command group, logging, and errors
turned into one line and an exit code.

Each group (`assets`, `mappings` with `plan`, `pins`, `daemons`, `fleet`) registers its own
subcommands and handlers; this module only runs the one the arguments chose.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import logging
import sys
from collections.abc import Callable, Sequence

from daybook import __version__
from daybook.config import Settings, load_settings
from daybook.errors import DaybookError
from daybook.logs import configure_logging, verbosity_level

Handler = Callable[[argparse.Namespace, Settings], int]

# Each group's module and the commands it adds, in the order `daybook --help` lists them. A
# command line naming one of these imports that group alone: a minion starting does not
# load the release lifecycle, nor `pin` the daemons. Help and mistakes get every group.
_GROUPS: dict[str, tuple[str, ...]] = {
    "daybook.cli.assets": ("push", "assets", "pull"),
    "daybook.cli.mappings": ("map",),
    "daybook.cli.pins": ("pin", "unpin", "rollback"),
    "daybook.cli.daemons": ("master", "minion"),
    "daybook.cli.fleet": ("status", "sync", "keys"),
}

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
    arguments = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(_group_of(arguments))
    args = parser.parse_args(arguments)
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
    except OSError as exc:
        # The commands turn the failures they expect into DaybookError; one that slipped
        # past them (a disk, a permission) is still one line, its traceback kept for -vv.
        logging.getLogger(__name__).debug("unexpected system error", exc_info=True)
        print(f"daybook: {_system_error_line(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("daybook: interrupted", file=sys.stderr)
        return 130


def main_entry() -> None:
    status = main()
    # Nothing the command made is needed any more, and the interpreter's exit would still
    # trace every object it tracks in several full collections: about 9 ms of a `pull`
    # that takes 0.1 s when nothing is new. Frozen objects are left to the process's end.
    gc.freeze()
    sys.exit(status)


def _system_error_line(exc: OSError) -> str:
    """`Permission denied: /srv/x`, or `/srv/x -> /srv/y` for a rename's two paths."""
    paths = " -> ".join(str(path) for path in (exc.filename, exc.filename2) if path is not None)
    reason = exc.strerror or str(exc)
    return f"{reason}: {paths}" if paths else reason


def _group_of(arguments: Sequence[str]) -> str | None:
    """The group of the command these arguments name, or None (every group) when they name
    none: the settings flags and their values may come first."""
    takes_value = {"--config", *_COMMON_FLAGS}
    skip = False
    for argument in arguments:
        if skip:
            skip = False
        elif argument in takes_value:
            skip = True
        elif not argument.startswith("-"):
            return next((group for group, names in _GROUPS.items() if argument in names), None)
    return None


def build_parser(group: str | None = None) -> argparse.ArgumentParser:
    """The whole command line, or with `group` only that group's commands."""
    common = _common_flags()
    parser = argparse.ArgumentParser(
        prog="daybook",
        description="Pull-based deployment: service tarballs in S3, host patterns in Consul.",
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=f"daybook {__version__}")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")
    for name in _GROUPS if group is None else (group,):
        importlib.import_module(name).register(sub, [common])
    return parser


def _common_flags() -> argparse.ArgumentParser:
    """The settings flags, a parent of every parser so they go before or after a command."""
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
    return common
