"""The operator's fleet commands: `sync`, `status` and `keys`, spoken to a running master.

zmq and the operator client are imported inside the handlers, so the other commands and
`--help` start fast. The master and minion themselves are started by `daybook.cli.daemons`.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from daybook.cli.output import describe_lifecycle, emit_json
from daybook.config import Settings
from daybook.errors import FleetError, InputError
from daybook.model.leadership import LEADER, MasterView, answered_view, unreachable_view
from daybook.model.patterns import check_pattern

if TYPE_CHECKING:
    from daybook.model.messages import ControlReply
    from daybook.model.pins import Pin
    from daybook.net.client import ControlClient

DEFAULT_SYNC_TIMEOUT_S = 30.0


def register(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
    parents: list[argparse.ArgumentParser],
) -> None:
    _register_sync(subparsers, parents)
    status = subparsers.add_parser(
        "status",
        parents=parents,
        help="the fleet as the master sees it",
        description="Every host the master knows: up or down (from heartbeats), last seen, "
        "last sync result, installed versions.",
    )
    status.add_argument("--json", action="store_true")
    status.set_defaults(handler=cmd_status)
    _register_keys(subparsers, parents)


def _register_sync(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
    parents: list[argparse.ArgumentParser],
) -> None:
    sync = subparsers.add_parser(
        "sync",
        parents=parents,
        help="ask the master for a fleet-wide sync now",
        description="Ask the master to sync every live minion (or those matching --target). "
        "With --wait, wait for every expected minion's result; exit 0 only if all answered "
        "ok. Without --wait, exit 0 once the master has started the sync. When the control "
        "port is 0, the master's endpoint is read from <data dir>/master.json.",
    )
    add_rolling_options(sync, what="the master syncs the hosts")
    sync.add_argument(
        "--abort",
        metavar="SYNC_ID",
        help="stop the rolling sync SYNC_ID: no further batch starts",
    )
    sync.add_argument("--json", action="store_true")
    sync.set_defaults(handler=cmd_sync)


def add_rolling_options(parser: argparse.ArgumentParser, *, what: str) -> None:
    """--target, --wait, --timeout and the rolling-sync options, for `sync` and the pin
    commands that may roll a pin out batch by batch."""
    parser.add_argument("--target", metavar="GLOB", help="only hosts matching this pattern")
    parser.add_argument("--wait", action="store_true", help="wait for every expected result")
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_SYNC_TIMEOUT_S,
        metavar="SECONDS",
        help=f"how long --wait waits (default {DEFAULT_SYNC_TIMEOUT_S:g})",
    )
    rolling = parser.add_argument_group(
        "rolling syncs",
        f"With --batch {what} batch by batch (in name order), counting a "
        "host that fails or does not answer within --timeout as a failure; once more than "
        "--max-failures hosts have failed it starts no further batch. --timeout is each "
        "batch's. With --wait, exit 1 when the rollout halts, naming the hosts synced, failed "
        "and never reached. The master drives the batches: closing the terminal stops nothing.",
    )
    rolling.add_argument(
        "--batch", metavar="N|N%", help="hosts per batch: a count, or a share of the hosts"
    )
    rolling.add_argument(
        "--max-failures",
        type=int,
        metavar="K",
        help="failed hosts allowed, over every batch, before the rollout halts (default 0)",
    )
    rolling.add_argument(
        "--batch-wait",
        type=float,
        metavar="SECONDS",
        help="pause between one batch closing and the next starting (default 0)",
    )


def _register_keys(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
    parents: list[argparse.ArgumentParser],
) -> None:
    keys = subparsers.add_parser(
        "keys",
        parents=parents,
        help="manage minion and operator keys",
        description="List the keys the master knows, and accept, reject or delete them, as "
        "salt-key does; these talk to the master through its local socket, so run them on the "
        "master's host as its user. `keys fingerprint` shows this node's own keys.",
    )
    keys_sub = keys.add_subparsers(title="keys commands", metavar="ACTION", required=True)
    listing = keys_sub.add_parser("list", parents=parents, help="every key, by standing")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(handler=cmd_keys_list)
    for action, text in (
        ("accept", "accept a pending (or rejected) key: the minion may sync from now on"),
        ("reject", "reject a key: the minion gets nothing, and is cut off if it was accepted"),
        ("delete", "forget a key: the minion is cut off, and is pending again when it returns"),
    ):
        change = keys_sub.add_parser(action, parents=parents, help=text)
        change.add_argument(
            "selector", metavar="HOST_OR_FINGERPRINT", help="a host name or SHA256:... fingerprint"
        )
        change.add_argument("--json", action="store_true")
        change.set_defaults(handler=cmd_keys_change, action=action)
    mine = keys_sub.add_parser(
        "fingerprint",
        parents=parents,
        help="this node's key fingerprints (the minion key is created if missing)",
        description="Show this node's minion key (created now if it does not exist yet, as "
        "the minion would on first start), and the master's key if this data dir holds it or "
        "has pinned it. Compare the minion's with `daybook keys list` on the master before "
        "accepting it.",
    )
    mine.add_argument("--json", action="store_true")
    mine.set_defaults(handler=cmd_keys_fingerprint)


def cmd_sync(args: argparse.Namespace, settings: Settings) -> int:
    from daybook.net.client import operator_client
    from daybook.views import sync_json

    if args.abort is not None:
        return _abort_sync(args, settings)
    target, timeout_s = _checked_target_and_timeout(args)
    if args.batch is not None:
        return rolling_sync(args, settings, target, timeout_s)
    refuse_rolling_options(args)
    started = time.monotonic()
    with operator_client(settings) as client:
        summary = client.run_sync(target, wait=args.wait, timeout_s=timeout_s)
    document = sync_json(summary)
    if args.json:
        emit_json(document)
    else:
        _print_sync(document, waited=args.wait, elapsed_s=time.monotonic() - started)
    if not args.wait:
        return 0
    return 0 if document["ok"] else 1


def _checked_target_and_timeout(args: argparse.Namespace) -> tuple[str | None, float]:
    from daybook.model.messages import MAX_WAIT_S

    # An empty --target is refused, never read as "every host".
    target = None if args.target is None else check_pattern(args.target)
    timeout_s: float = args.timeout
    if not (math.isfinite(timeout_s) and timeout_s > 0):
        raise InputError(f"--timeout must be a positive number of seconds, not {timeout_s:g}")
    # The master refuses a longer deadline: say so here, before anything is sent.
    if timeout_s > MAX_WAIT_S:
        raise InputError(f"--timeout must be at most {MAX_WAIT_S:g} s (a day), not {timeout_s:g}")
    return target, timeout_s


def refuse_rolling_options(args: argparse.Namespace) -> None:
    """Without --batch, the options of a rolling sync mean nothing: say so (exit 2)."""
    for flag, value in (("--max-failures", args.max_failures), ("--batch-wait", args.batch_wait)):
        if value is not None:
            raise InputError(f"{flag} goes with --batch: it is about rolling syncs")


def rolling_sync(
    args: argparse.Namespace,
    settings: Settings,
    target: str | None = None,
    timeout_s: float | None = None,
    *,
    pin: Pin | None = None,
) -> int:
    """Start a rolling sync (carrying `pin`, if given) from the parsed rolling options, and
    with --wait follow it to its end; exit 1 when it halted or a host failed."""
    if timeout_s is None:
        target, timeout_s = _checked_target_and_timeout(args)
    from daybook.model.messages import MAX_WAIT_S
    from daybook.model.rollout import COMPLETE, parse_batch_size
    from daybook.net.client import operator_client
    from daybook.views import rollout_json

    batch = str(parse_batch_size(args.batch))
    max_failures: int = 0 if args.max_failures is None else args.max_failures
    if max_failures < 0:
        raise InputError(f"--max-failures must be 0 or more, not {max_failures}")
    batch_wait_s: float = 0.0 if args.batch_wait is None else args.batch_wait
    if not (math.isfinite(batch_wait_s) and 0 <= batch_wait_s <= MAX_WAIT_S):
        raise InputError(f"--batch-wait must be 0 to {MAX_WAIT_S:g} seconds, not {batch_wait_s:g}")
    started = time.monotonic()
    with operator_client(settings) as client:
        summary, rollout = client.run_rollout(
            target,
            batch=batch,
            max_failures=max_failures,
            batch_wait_s=batch_wait_s,
            wait=args.wait,
            timeout_s=timeout_s,
            pin=pin,
        )
    document = rollout_json(summary, rollout)
    if pin is not None:
        # The pin commands' own fields (`daybook pin --json`), beside the rollout's.
        document.update(service=pin.service, pinned=pin.version)
    if args.json:
        emit_json(document)
    else:
        _print_rollout(document, waited=args.wait, elapsed_s=time.monotonic() - started)
    if not args.wait:
        return 0
    return 0 if rollout.state == COMPLETE and summary.ok else 1


def _abort_sync(args: argparse.Namespace, settings: Settings) -> int:
    from daybook.model.ids import is_valid_id
    from daybook.net.client import operator_client
    from daybook.views import rollout_json

    others = {
        "--batch": args.batch,
        "--max-failures": args.max_failures,
        "--batch-wait": args.batch_wait,
        "--target": args.target,
        "--wait": args.wait or None,
    }
    given = [flag for flag, value in others.items() if value is not None]
    if given:
        raise InputError(f"--abort takes no other sync option ({', '.join(given)})")
    sync_id: str = args.abort
    if not is_valid_id(sync_id):
        raise InputError(f"{sync_id!r} is not a sync id")
    with operator_client(settings) as client:
        summary, rollout = client.abort_rollout(sync_id)
    document = rollout_json(summary, rollout)
    if args.json:
        emit_json(document)
        return 0
    print(
        f"aborted rolling sync {rollout.rollout_id}: {rollout.closed} of "
        f"{len(rollout.batches)} batch(es) done; no further batch starts"
    )
    if rollout.not_reached:
        print(f"never reached: {', '.join(rollout.not_reached)}")
    return 0


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    from daybook.net.client import every_master_status
    from daybook.views import master_json, status_json

    answers = every_master_status(settings)
    views = [_master_view(address, reply) for address, reply in answers]
    # The fleet as the leader sees it; a standby's view if no leader answered.
    answered = [
        (view, reply.status)
        for view, (_, reply) in zip(views, answers, strict=True)
        if reply is not None and reply.status is not None
    ]
    if not answered:
        refusals = [reply.error for _, reply in answers if reply is not None and reply.error]
        raise FleetError(f"no master sent the fleet's status: {'; '.join(refusals)}")
    status = next((s for view, s in answered if view.role == LEADER), answered[0][1])
    document = status_json(status)
    document["masters"] = [master_json(view) for view in views]
    if args.json:
        emit_json(document)
    else:
        _print_status(document)
        _print_masters(document["masters"])
    return 0


def _master_view(address: str, reply: ControlReply | None) -> MasterView:
    if reply is None:
        return unreachable_view(address)
    return answered_view(address, reply.leader, standby=reply.standby, leading=reply.leading)


def _print_masters(masters: list[dict[str, Any]]) -> None:
    rows = [
        (
            master["address"],
            master["role"],
            "-" if master["term"] is None else str(master["term"]),
            master["since"] or "-",
        )
        for master in masters
    ]
    print()
    _print_table(("MASTER", "ROLE", "TERM", "SINCE"), rows)


def _local_client(settings: Settings) -> ControlClient:
    from daybook.net.client import ControlClient, local_endpoint
    from daybook.net.endpoints import local_socket_path

    endpoint = local_endpoint(settings)
    if endpoint is None:
        raise FleetError(
            f"no master's local socket at {local_socket_path(settings.data_dir)}: run this on "
            "the master's host, as the master's user, with the master's data dir"
        )
    return ControlClient(endpoint)


def cmd_keys_list(args: argparse.Namespace, settings: Settings) -> int:
    from daybook.views import keys_json

    with _local_client(settings) as client:
        document = keys_json(client.keys())
    if args.json:
        emit_json(document)
        return 0
    rows = [
        (state.upper(), key["host"] or "-", key["role"], key["fingerprint"], key["address"] or "-")
        for state in ("accepted", "pending", "rejected")
        for key in document[state]
    ]
    if not rows:
        print("the master knows no keys yet")
        return 0
    _print_table(("STATE", "HOST", "ROLE", "FINGERPRINT", "ADDRESS"), rows)
    return 0


def cmd_keys_change(args: argparse.Namespace, settings: Settings) -> int:
    from daybook.model.messages import (
        OP_KEYS_ACCEPT,
        OP_KEYS_DELETE,
        OP_KEYS_REJECT,
        is_valid_selector,
    )
    from daybook.views import key_json

    selector: str = args.selector
    if not is_valid_selector(selector):
        raise InputError(f"{selector!r} is neither a host name nor a SHA256:... key fingerprint")
    op = {"accept": OP_KEYS_ACCEPT, "reject": OP_KEYS_REJECT, "delete": OP_KEYS_DELETE}
    with _local_client(settings) as client:
        key = client.change_key(op[args.action], selector)
    if args.json:
        emit_json({**key_json(key), "action": args.action})
        return 0
    done = {"accept": "accepted", "reject": "rejected", "delete": "deleted"}[args.action]
    print(f"{done} the {key.role} key {key.fingerprint} of {key.host or 'an unnamed host'}")
    return 0


def cmd_keys_fingerprint(args: argparse.Namespace, settings: Settings) -> int:
    from daybook.model.keys import fingerprint
    from daybook.net.keys import MINION_KEY, keys_dir, load_or_create_keypair
    from daybook.net.transport import known_master_key

    minion, created = load_or_create_keypair(keys_dir(settings.data_dir), MINION_KEY)
    known = known_master_key(settings)
    document: dict[str, Any] = {
        "host": settings.hostname,
        "minion": {"fingerprint": minion.fingerprint, "public_key": minion.public},
        "master": None
        if known is None
        else {"fingerprint": fingerprint(known[0]), "public_key": known[0], "source": known[1]},
    }
    if args.json:
        emit_json(document)
        return 0
    note = " (created now)" if created else ""
    print(f"minion key of {settings.hostname}: {minion.fingerprint}{note}")
    if known is not None:
        print(f"master key: {fingerprint(known[0])} (public key {known[0]}, from {known[1]})")
    return 0


# -- human output --------------------------------------------------------------------------------

# `daybook status` lists this many of the master's recent syncs under the hosts.
RECENT_SYNCS_SHOWN = 5


def _print_sync(document: dict[str, Any], *, waited: bool, elapsed_s: float) -> None:
    expected: list[str] = document["expected"]
    results: dict[str, Any] = document["results"]
    missing: list[str] = document["missing"]
    head = f"sync {document['sync_id']} to {document['target']}"
    if not expected:
        print(f"{head}: no live minion matches; nothing to wait for")
        return
    if not waited:
        print(f"{head} started; expecting {len(expected)} host(s): {', '.join(expected)}")
        return
    failed = [host for host, result in results.items() if not result["ok"]]
    print(
        f"{head} {document['state']}: {len(results)}/{len(expected)} answered, "
        f"{len(failed)} failed, {len(missing)} missing ({elapsed_s:.2f} s)"
    )
    rows = [
        (host, _result_word(result), _describe_services(result)) for host, result in results.items()
    ]
    silent: dict[str, Any] = document.get("silent", {})
    rows += [(host, "MISSING", _describe_silence(silent.get(host))) for host in missing]
    _print_table(("HOST", "RESULT", "SERVICES"), rows)


def _print_rollout(document: dict[str, Any], *, waited: bool, elapsed_s: float) -> None:
    batches: list[list[str]] = document["batches"]
    head = f"rolling sync {document['sync_id']} to {document['target']}"
    if not batches:
        print(f"{head}: no live minion matches; nothing to roll out")
        return
    sizes = ", ".join(str(len(batch)) for batch in batches)
    if not waited:
        print(f"{head} started: {len(batches)} batch(es) of {sizes} host(s)")
        return
    state: str = document["state"]
    print(f"{head} {state.upper()} ({elapsed_s:.2f} s): {len(batches)} batch(es) of {sizes}")
    if document["why"]:
        print(f"why: {document['why']}")
    failed: dict[str, str] = document["failed"]
    print(f"synced: {', '.join(document['synced']) or '-'}")
    print(f"failed: {', '.join(f'{host} ({why})' for host, why in failed.items()) or '-'}")
    print(f"never reached: {', '.join(document['not_reached']) or '-'}")
    results: dict[str, Any] = document["results"]
    rows = [
        (host, _result_word(result), _describe_services(result)) for host, result in results.items()
    ]
    if rows:
        _print_table(("HOST", "RESULT", "SERVICES"), rows)


def _result_word(result: dict[str, Any]) -> str:
    word = "ok" if result["ok"] else "FAILED"
    return f"{word} (late)" if result.get("late") else word


def _describe_silence(silence: dict[str, Any] | None) -> str:
    """Why a host did not answer: down since when, or no answer (or still waiting)."""
    if silence is None:
        return "no answer"
    if silence["reason"] == "down":
        return f"down since {silence['since']}"
    return "no answer before the deadline"


def _describe_services(result: dict[str, Any]) -> str:
    if result.get("error"):
        return f"error: {result['error']}"
    if result["pattern"] is None:
        return "no pattern matches"
    parts = []
    for name, service in result["services"].items():
        bits = []
        if service["installed"]:
            bits.append(f"installed {', '.join(service['installed'])}")
        if service["present"]:
            bits.append(f"present {', '.join(service['present'])}")
        for version, reason in service["failed"].items():
            bits.append(f"FAILED {version}: {reason}")
        if service.get("error"):
            bits.append(f"FAILED: {service['error']}")
        lifecycle = describe_lifecycle(service)
        if lifecycle:
            bits.append(lifecycle)
        parts.append(f"{name}: {'; '.join(bits) or 'no versions'}")
    return " | ".join(parts) or "no services"


def _print_status(document: dict[str, Any]) -> None:
    hosts: dict[str, Any] = document["hosts"]
    if not hosts:
        print("no minion has reported to the master yet")
        return
    rows = []
    for host, entry in hosts.items():
        last = entry["last_sync"]
        if last is None:
            last_text = "never"
        else:
            outcome = "ok" if last["ok"] else "FAILED"
            last_text = f"{outcome} {last['sync_id'][:8]} {last['finished_at'] or ''}"
        installed = "; ".join(
            f"{name} {', '.join(versions) or '-'}" for name, versions in entry["installed"].items()
        )
        rows.append(
            (
                host,
                "up" if entry["up"] else "DOWN",
                f"{entry['last_seen_ago_s']:.0f}s ago",
                last_text,
                installed or "-",
            )
        )
    _print_table(("HOST", "STATE", "SEEN", "LAST SYNC", "INSTALLED"), rows)
    _print_rollouts(document.get("rollouts", []))
    syncs: list[dict[str, Any]] = document.get("syncs", [])
    if syncs:
        print()
        _print_table(
            ("SYNC", "ORIGIN", "ISSUED", "STATE"),
            [
                (sync["sync_id"][:8], sync["origin"], sync["issued_at"], _describe_state(sync))
                for sync in syncs[:RECENT_SYNCS_SHOWN]
            ],
        )


def _print_rollouts(rollouts: list[dict[str, Any]]) -> None:
    """The running and halted rolling syncs: their progress, and why one halted."""
    shown = [r for r in rollouts if r["state"] in ("running", "halted")]
    if not shown:
        return
    print()
    rows = []
    for rollout in shown[:RECENT_SYNCS_SHOWN]:
        progress = f"{rollout['batches_done']}/{rollout['batches']} batches"
        if rollout["running_batch"] is not None:
            progress += f", batch {rollout['running_batch']} running"
        failed = ", ".join(f"{host} ({why})" for host, why in rollout["failed"].items())
        rows.append(
            (
                rollout["sync_id"][:8],
                rollout["state"].upper(),
                progress,
                rollout["why"] or (f"failed: {failed}" if failed else "-"),
            )
        )
    _print_table(("ROLLING SYNC", "STATE", "PROGRESS", "WHY"), rows)


def _describe_state(sync: dict[str, Any]) -> str:
    silent: dict[str, Any] = sync["silent"]
    if not silent:
        return str(sync["state"])
    named = ", ".join(f"{host} ({_describe_silence(why)})" for host, why in silent.items())
    return f"{len(silent)} did not answer: {named}"


def _print_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header) - 1)]
    for row in [header, *rows]:
        cells = [f"{cell:<{width}}" for cell, width in zip(row, widths, strict=False)]
        print("  ".join([*cells, str(row[-1])]))
