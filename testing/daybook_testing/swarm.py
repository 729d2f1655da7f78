"""The swarm: many real minions in one process, for benchmarks and load tests.

Each minion has its own host name, data dir, install dir and sockets, and runs the same code
as a minion process; they share one zmq Context, one poller loop, one store client, one
decoded-state cache and a small pool of sync threads.

    python -m daybook_testing.swarm --count 1000 [--prefix swarm]

takes its other settings (master, ports, store, data dir) from the usual config file and
DAYBOOK_* variables; minion N is `<prefix>-NNNN` with its files under
`<data dir>/swarm/<host>/`.
"""

from __future__ import annotations

import argparse
import functools
import logging
import resource
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import zmq

from daybook.config import Settings, load_settings
from daybook.errors import DaybookError
from daybook.lifecycle import Lifecycle
from daybook.logs import configure_logging
from daybook.mailbox import Mailbox
from daybook.model.patterns import check_host
from daybook.stopping import StopFlag
from daybook.store.base import Store, open_store
from minion.desired import DesiredStateCache
from minion.loop import MinionLoop
from minion.minion import LoopTask, Minion
from minion.process import (
    MinionSpec,
    check_master_ports,
    client_credentials,
    close_minion,
    connect_minion,
    master_key,
    minion_keypair,
)

log = logging.getLogger(__name__)

# Four sockets per minion (SUB, PUSH, and the pair monitoring the PUSH socket's link),
# plus ZeroMQ's own descriptors per socket.
FDS_PER_MINION = 10


def swarm_specs(settings: Settings, count: int, prefix: str) -> list[MinionSpec]:
    specs = []
    for index in range(count):
        host = check_host(f"{prefix}-{index:04d}")
        data_dir = settings.data_dir / "swarm" / host
        specs.append(MinionSpec(host, data_dir, data_dir / "install"))
    return specs


def _raise_fd_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def run_swarm(
    settings: Settings,
    count: int,
    *,
    prefix: str = "swarm",
    workers: int = 8,
    stop: StopFlag | None = None,
    ready: Callable[[Sequence[Minion]], None] | None = None,
) -> int:
    """Run `count` minions until `stop` is set or a signal arrives."""
    check_master_ports(settings)
    _raise_fd_limit(count * FDS_PER_MINION + 256)
    with Lifecycle(stop) as life:
        # Per minion: SUB, PUSH, and the pair that monitors the PUSH socket's link.
        life.context.set(zmq.MAX_SOCKETS, count * 4 + 64)
        store = open_store(settings.store, lazy=True)
        life.release(store.close)
        mailbox: Mailbox[LoopTask] = Mailbox()
        life.release(mailbox.close)
        pool = ThreadPoolExecutor(workers, thread_name_prefix="swarm-sync")
        # One thread writes every minion's memory file, off the path of their answers.
        saver = ThreadPoolExecutor(1, thread_name_prefix="swarm-save")
        for executor in (pool, saver):
            # Joined while draining; a sync still running then is not waited for.
            life.worker(stop=functools.partial(executor.shutdown, False, cancel_futures=True))
        minions = _connect_swarm(
            life,
            settings,
            swarm_specs(settings, count, prefix),
            store=store,
            mailbox=mailbox,
            pool=pool,
            saver=saver,
        )
        loop = MinionLoop(minions, mailbox)
        life.stop.on_set(lambda: mailbox.post(lambda: None))
        log.info("swarm of %d minions following %s", count, settings.endpoint(settings.port))
        if ready is not None:
            ready(minions)
        life.run(loop.run)
        for minion in minions:
            minion.worker.cancel()
        pool.shutdown(wait=True, cancel_futures=True)
        saver.shutdown(wait=True)
        for minion in minions:
            minion.stop(timeout_s=0)
        loop.run_tasks()  # the last reports go out before the sockets close
    return 0


def _connect_swarm(
    life: Lifecycle,
    settings: Settings,
    specs: list[MinionSpec],
    *,
    store: Store,
    mailbox: Mailbox[LoopTask],
    pool: ThreadPoolExecutor,
    saver: ThreadPoolExecutor,
) -> list[Minion]:
    """One master key for all; each minion its own key pair, in its own data dir. The
    swarm says no hello: it is meant for a master with auto_accept, which binds each key
    to the host its first heartbeat names."""

    def spawn(target: LoopTask) -> None:
        pool.submit(target)

    def persist(save: LoopTask) -> None:
        saver.submit(save)

    server_key = master_key(settings, life.context, life.stop)
    cache = DesiredStateCache()
    minions: list[Minion] = []
    for spec in specs:
        spec.data_dir.mkdir(parents=True, exist_ok=True)
        minion = connect_minion(
            life.context,
            settings,
            spec,
            store=store,
            mailbox=mailbox,
            cache=cache,
            stop=life.stop,
            spawn=spawn,
            persist=persist,
            credentials=client_credentials(minion_keypair(settings, spec), server_key),
        )
        life.closes(functools.partial(close_minion, minion))
        minions.append(minion)
    return minions


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m daybook_testing.swarm", description=__doc__)
    parser.add_argument("--count", type=int, required=True, help="how many minions")
    parser.add_argument("--prefix", default="swarm", help="host name prefix (default swarm)")
    parser.add_argument("--workers", type=int, default=8, help="sync threads (default 8)")
    parser.add_argument("-v", "--verbose", action="count", default=0)
    args = parser.parse_args(argv)
    configure_logging(logging.WARNING if args.verbose == 0 else logging.INFO, program="swarm")
    if args.count < 1 or args.workers < 1:
        parser.error("--count and --workers must be at least 1")
    try:
        return run_swarm(load_settings(), args.count, prefix=args.prefix, workers=args.workers)
    except DaybookError as exc:
        print(f"swarm: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
