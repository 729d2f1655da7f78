"""The `daybook` command: the parser assembled from each command group, logging, and errors
turned into one line and an exit code.

Each group (`assets`, `mappings` with `plan`, `pins`, `daemons`, `fleet`) registers its own
subcommands and handlers; this module only runs the one the arguments chose.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from daybook import __version__
from daybook.cli import assets, daemons, fleet, mappings, pins
from daybook.config import Settings, load_settings
from daybook.errors import DaybookError
from daybook.logs import configure_logging, verbosity_level

Handler = Callable[[argparse.Namespace, Settings], int]

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
    common = _common_flags()
    parser = argparse.ArgumentParser(
        prog="daybook",
        description="Pull-based deployment: service tarballs in S3, host patterns in Consul.",
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=f"daybook {__version__}")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")
    # Each group adds its own commands, in the order `daybook --help` lists them.
    assets.register(sub, [common])
    mappings.register(sub, [common])
    pins.register(sub, [common])
    daemons.register(sub, [common])
    fleet.register(sub, [common])
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
