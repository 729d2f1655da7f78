"""The master process: the composition root that binds the sockets, starts the watchers,
owns the zmq Context and runs the loop until SIGTERM or SIGINT."""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path

import zmq

from daybook.config import Settings
from daybook.control import ENDPOINTS_FILE
from daybook.errors import FleetError
from daybook.mailbox import Mailbox
from daybook.registry import open_registry
from daybook.stopping import StopFlag, stop_on_signals
from daybook.store import open_store
from daybook.wire import MAX_MESSAGE_BYTES
from master.changes import Change, Wake
from master.collector import Collector
from master.control_server import ControlServer
from master.database import ResultsDatabase
from master.fleet import Fleet
from master.master import Master, MasterTuning
from master.publisher import Publisher
from master.registry_watcher import RegistryWatcher
from master.store_watcher import StoreWatcher

log = logging.getLogger(__name__)

DATABASE_FILE = "master.db"
# Answers to operators still queued when the master stops get this long to leave.
REPLY_LINGER_MS = 1000

Endpoints = dict[str, str]


def endpoints_path(data_dir: Path) -> Path:
    return data_dir / ENDPOINTS_FILE


def _bind(socket: zmq.Socket[bytes], host: str, port: int) -> str:
    # Port 0 asks the OS for a free port; ZeroMQ spells that `*`.
    endpoint = f"tcp://{host}:{port or '*'}"
    try:
        socket.bind(endpoint)
    except zmq.ZMQError as exc:
        raise FleetError(f"cannot listen on {endpoint}: {exc}") from None
    return socket.getsockopt_string(zmq.LAST_ENDPOINT)


def _write_endpoints(path: Path, endpoints: Endpoints, epoch: int) -> None:
    ports = {role: int(endpoint.rsplit(":", 1)[1]) for role, endpoint in endpoints.items()}
    document = {"pid": os.getpid(), "epoch": epoch, "endpoints": endpoints, "ports": ports}
    temp = path.with_name(f".{path.name}.{os.getpid()}")
    temp.write_text(json.dumps(document, indent=2) + "\n")
    os.replace(temp, path)


def run_master(
    settings: Settings,
    *,
    ready: Callable[[Endpoints], None] | None = None,
    stop: StopFlag | None = None,
) -> int:
    """Run the master in the foreground until `stop` is set or a signal arrives.

    `ready` is called with the bound endpoints ({"publish", "results", "control"}) once the
    sockets listen; the same endpoints go to `<data_dir>/master.json`.
    """
    stop = stop or StopFlag()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    registry = open_registry(settings.registry, key_prefix=settings.consul_key_prefix)
    store = open_store(settings.store)
    database = ResultsDatabase(settings.data_dir / DATABASE_FILE)
    mailbox: Mailbox[Change] = Mailbox()
    registry_watcher = RegistryWatcher(
        registry,
        mailbox.post,
        blocking=not settings.registry.startswith("file:"),
        interval_s=settings.registry_poll_interval_s,
    )
    store_watcher = StoreWatcher(store, mailbox.post, interval_s=settings.store_poll_interval_s)
    watchers: list[RegistryWatcher | StoreWatcher] = [registry_watcher, store_watcher]
    threads: list[threading.Thread] = []
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sockets: list[zmq.Socket[bytes]] = []
    path = endpoints_path(settings.data_dir)
    try:
        epoch = database.next_epoch()
        publish = context.socket(zmq.PUB)
        results = context.socket(zmq.PULL)
        control = context.socket(zmq.ROUTER)
        sockets += [publish, results, control]
        publish.setsockopt(zmq.LINGER, 0)
        results.setsockopt(zmq.LINGER, 0)
        control.setsockopt(zmq.LINGER, REPLY_LINGER_MS)
        # A peer sending more than any real message is disconnected by ZeroMQ itself.
        results.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
        control.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
        endpoints: Endpoints = {
            "publish": _bind(publish, settings.bind, settings.port),
            "results": _bind(results, settings.bind, settings.results_port),
            "control": _bind(control, settings.bind, settings.control_port),
        }
        _write_endpoints(path, endpoints, epoch)

        master = Master(
            epoch=epoch,
            publisher=Publisher(publish),
            collector=Collector(results),
            control=ControlServer(control),
            database=database,
            fleet=Fleet(settings.down_after_s, database.load_hosts()),
            mailbox=mailbox,
            tuning=MasterTuning(republish_interval_s=settings.republish_interval_s),
            refreshers={
                watcher.SOURCE: watcher.refresh
                for watcher in watchers
                if not isinstance(watcher, RegistryWatcher) or watcher.refreshable
            },
        )
        master.restore()
        threads = [
            threading.Thread(target=watcher.run, name=f"{watcher.SOURCE}-watcher", daemon=True)
            for watcher in watchers
        ]
        for thread in threads:
            thread.start()
        stop.on_set(lambda: mailbox.post(Wake()))
        restore = stop_on_signals(stop)
        log.info("master epoch %d listening: %s", epoch, endpoints)
        if ready is not None:
            ready(endpoints)
        try:
            master.run(stop)
        finally:
            restore()
    finally:
        for watcher in watchers:
            watcher.stop()
        for thread in threads:
            # A Consul blocking query may hold its thread a while; it is a daemon.
            thread.join(timeout=1.0)
        for socket in sockets:
            socket.close()
        context.term()
        database.close()
        mailbox.close()
        path.unlink(missing_ok=True)
        store.close()
        registry.close()
    return 0
