"""The minion process: the composition root that builds a minion, owns the zmq Context and
runs the loop until SIGTERM or SIGINT."""

from __future__ import annotations

import logging
import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import zmq

from daybook.config import Settings
from daybook.errors import ConfigError
from daybook.installer import Installer
from daybook.mailbox import Mailbox
from daybook.stopping import StopFlag, stop_on_signals
from daybook.store import Store, open_store
from daybook.wire import MAX_FRAME_BYTES, TOPIC_SYNC
from minion.desired import DesiredStateCache
from minion.driver import Driver
from minion.memory import MinionMemory
from minion.minion import Callback, Minion
from minion.reporter import Reporter
from minion.subscriber import EventSubscriber
from minion.sync import Applier, Syncer, start_daemon_thread

log = logging.getLogger(__name__)

# Reports and heartbeats queued while the master is away; beyond this they are dropped.
REPORT_QUEUE_MAX = 1000
# How long closing the PUSH socket may take to hand over what is still queued.
REPORT_LINGER_MS = 2000
RECONNECT_MIN_MS = 100
RECONNECT_MAX_MS = 2000


@dataclass(frozen=True)
class MinionSpec:
    """Who one minion is and where it keeps its files; the swarm makes many."""

    host: str
    data_dir: Path
    install_dir: Path


def connect_minion(
    context: zmq.Context[zmq.Socket[bytes]],
    settings: Settings,
    spec: MinionSpec,
    *,
    store: Store,
    mailbox: Mailbox[Callback],
    cache: DesiredStateCache,
    stop: StopFlag,
    spawn: Callable[[Callback], None] = start_daemon_thread,
    persist: Callable[[Callback], None] = lambda save: save(),
) -> Minion:
    """Build one minion with its own SUB and PUSH sockets, connected to the master."""
    subscriber_socket = context.socket(zmq.SUB)
    subscriber_socket.setsockopt(zmq.LINGER, 0)
    subscriber_socket.setsockopt(zmq.MAXMSGSIZE, MAX_FRAME_BYTES + 64 * 1024)
    push_socket = context.socket(zmq.PUSH)
    push_socket.setsockopt(zmq.LINGER, REPORT_LINGER_MS)
    push_socket.setsockopt(zmq.SNDHWM, REPORT_QUEUE_MAX)
    for socket in (subscriber_socket, push_socket):
        socket.setsockopt(zmq.RECONNECT_IVL, RECONNECT_MIN_MS)
        socket.setsockopt(zmq.RECONNECT_IVL_MAX, RECONNECT_MAX_MS)
    subscriber_socket.setsockopt(zmq.SUBSCRIBE, TOPIC_SYNC)
    subscriber_socket.connect(settings.endpoint(settings.port))
    push_socket.connect(settings.endpoint(settings.results_port))

    rng = random.Random()

    def splay() -> bool:
        return not stop.wait(rng.uniform(0, settings.splay_s)) if settings.splay_s > 0 else True

    memory = MinionMemory(spec.data_dir, spec.install_dir)
    installer = Installer(store, spec.install_dir, max_parallel=settings.max_parallel_downloads)
    syncer = Syncer(spec.host, Applier(installer, memory, splay), cache, memory)
    return Minion(
        host=spec.host,
        subscriber=EventSubscriber(subscriber_socket),
        reporter=Reporter(push_socket),
        syncer=syncer,
        memory=memory,
        mailbox=mailbox,
        heartbeat_interval_s=settings.heartbeat_interval_s,
        boot_id=uuid.uuid4().hex,
        spawn=spawn,
        persist=persist,
    )


def check_master_ports(settings: Settings) -> None:
    if not (settings.port and settings.results_port):
        raise ConfigError(
            "a minion needs the master's real ports, not 0: set the port (DAYBOOK_PORT) and, "
            "if the master chose its own, DAYBOOK_RESULTS_PORT as written in its master.json"
        )


def close_minion(minion: Minion) -> None:
    minion.subscriber.socket.close()
    minion.reporter.socket.close()


def run_minion(
    settings: Settings,
    *,
    stop: StopFlag | None = None,
    drain_timeout_s: float = 10.0,
) -> int:
    """Run one minion in the foreground until `stop` is set or a signal arrives."""
    check_master_ports(settings)
    stop = stop or StopFlag()
    spec = MinionSpec(settings.hostname, settings.data_dir, settings.install_dir)
    spec.data_dir.mkdir(parents=True, exist_ok=True)
    store = open_store(settings.store)
    mailbox: Mailbox[Callback] = Mailbox()
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    minion: Minion | None = None
    try:
        minion = connect_minion(
            context,
            settings,
            spec,
            store=store,
            mailbox=mailbox,
            cache=DesiredStateCache(),
            stop=stop,
        )
        driver = Driver([minion], mailbox)
        stop.on_set(lambda: mailbox.post(lambda: None))
        restore = stop_on_signals(stop)
        log.info(
            "minion %s following the master at %s (reports to port %d)",
            spec.host,
            settings.endpoint(settings.port),
            settings.results_port,
        )
        try:
            driver.run(stop)
        finally:
            restore()
        minion.stop(drain_timeout_s)
        driver.run_callbacks()  # the last reports go out before the sockets close
    finally:
        if minion is not None:
            close_minion(minion)
        context.term()
        mailbox.close()
        store.close()
    return 0
