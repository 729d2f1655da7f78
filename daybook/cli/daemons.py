"""`daybook master` and `daybook minion`: run the two processes in the foreground.

This is the one module of the CLI layer that reaches up into the `master` and `minion`
packages, because one `daybook` command is how users and systemd units start them. Every
other part of `daybook` sits below those packages and must never import them (the
dependencies point one way: model, backends, install, net <- master, minion <- cli).

The imports happen inside the command functions, not at the top: the processes bring
zmq, the results database and the HTTP server, which the operator commands (`map`,
`push`, `sync`, ...) and every `--help` would otherwise pay for on each start.
"""

from __future__ import annotations

import argparse

from daybook.config import Settings


def register(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
    parents: list[argparse.ArgumentParser],
) -> None:
    master = subparsers.add_parser(
        "master",
        parents=parents,
        help="run the master in the foreground",
        description="Watch the mappings and the store, publish sync events to the minions, "
        "collect their results. Stops cleanly on SIGTERM or SIGINT. With port 0 the master "
        "picks free ports and writes them to <data dir>/master.json.",
    )
    master.set_defaults(handler=cmd_master)

    minion = subparsers.add_parser(
        "minion",
        parents=parents,
        help="run a minion in the foreground",
        description="Follow the master's sync events, install this host's missing versions "
        "and report back. Stops cleanly on SIGTERM or SIGINT.",
    )
    minion.set_defaults(handler=cmd_minion)


def cmd_master(args: argparse.Namespace, settings: Settings) -> int:
    from master.process import run_master

    return run_master(settings)


def cmd_minion(args: argparse.Namespace, settings: Settings) -> int:
    from minion.process import run_minion

    return run_minion(settings)
