"""The master process: the composition root that binds the sockets, starts the watchers,
owns the zmq Context and runs the loop until SIGTERM or SIGINT."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import zmq

from daybook.config import Settings
from daybook.errors import FleetError
from daybook.mailbox import Mailbox
from daybook.net.client import ENDPOINTS_FILE, local_socket_path
from daybook.net.keys import (
    KEYRING_FILE,
    MASTER_KEY,
    KeyPair,
    keys_dir,
    load_or_create_keypair,
    private_dir,
)
from daybook.net.transport import (
    DOMAIN_CONTROL,
    DOMAIN_PUBLISH,
    DOMAIN_RESULTS,
    MAX_KEY_FRAME_BYTES,
    ZAP_ENDPOINT,
    local_server,
    secure_server,
)
from daybook.registry.base import open_registry
from daybook.stopping import StopFlag, stop_on_signals
from daybook.store.base import open_store
from daybook.wire import MAX_MESSAGE_BYTES
from master.access import Access
from master.changes import Change, Wake
from master.collector import Collector
from master.control_server import ControlServer
from master.database import ResultsDatabase, ResultsReader
from master.fleet import Fleet
from master.gatekeeper import Gatekeeper
from master.http_server import HttpApp, HttpServer, is_loopback_name
from master.keyring import KeyRing
from master.master import Master
from master.metrics import MasterMetrics
from master.publisher import Publisher
from master.registry_watcher import RegistryWatcher
from master.snapshot import FleetSnapshot, SnapshotBox
from master.store_watcher import StoreWatcher
from master.tuning import MasterTuning

log = logging.getLogger(__name__)

DATABASE_FILE = "master.db"
# Answers to operators still queued when the master stops get this long to leave.
REPLY_LINGER_MS = 1000
# What a subscriber sends a PUB socket is its subscriptions, a few bytes each; the cap also
# bounds the handshake's commands (a CURVE INITIATE is a few hundred bytes).
MAX_SUBSCRIPTION_BYTES = 4096

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


def _bind_local(socket: zmq.Socket[bytes], data_dir: Path) -> str | None:
    """Bind the operators' local socket, in a directory only the master's user can enter;
    None (with a warning) where the path is too long for a Unix socket."""
    path = local_socket_path(data_dir)
    endpoint = f"ipc://{path}"
    private_dir(path.parent)
    local_server(socket)
    try:
        socket.bind(endpoint)
    except zmq.ZMQError as exc:
        log.warning("no local operator socket (%s); operators need an accepted operator key", exc)
        return None
    os.chmod(path, 0o600)
    return endpoint


def _master_keys(settings: Settings) -> tuple[KeyPair | None, KeyRing | None]:
    """The master's key pair and key ring; none of either with the insecure opt-out."""
    if settings.insecure_transport:
        log.warning(
            "INSECURE TRANSPORT (insecure_transport = true): no encryption, no key "
            "authentication. Anyone who can reach ports %d-%d can read every event and report "
            "for any host. For benchmarks only; never in production.",
            settings.port,
            settings.results_port,
        )
        return None, None
    directory = keys_dir(settings.data_dir)
    keypair, created = load_or_create_keypair(directory, MASTER_KEY)
    log.log(
        logging.WARNING if created else logging.INFO,
        "%s master key %s (public key %s)",
        "created the" if created else "using the",
        keypair.fingerprint,
        keypair.public,
    )
    if settings.auto_accept:
        log.warning(
            "auto_accept is on: every new minion key is accepted without an operator; "
            "for trials and tests only"
        )
    return keypair, KeyRing.load(directory / KEYRING_FILE, auto_accept=settings.auto_accept)


def _write_endpoints(path: Path, endpoints: Endpoints, epoch: int) -> None:
    # Every endpoint but the local ipc:// one ends in its port.
    ports = {
        role: int(port)
        for role, endpoint in endpoints.items()
        if (port := endpoint.rsplit(":", 1)[-1]).isdigit()
    }
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

    `ready` is called with the bound endpoints ({"publish", "results", "control", "http",
    and "key" and "local" when present}) once the sockets listen; the same endpoints go to
    `<data_dir>/master.json`.
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
    # The ZAP socket closes last: libzmq lets every handshake through while none is bound.
    zap_sockets: list[zmq.Socket[bytes]] = []
    gatekeeper: Gatekeeper | None = None
    gate_thread: threading.Thread | None = None
    keyring: KeyRing | None = None
    http: HttpServer | None = None
    path = endpoints_path(settings.data_dir)
    try:
        epoch = database.next_epoch()
        keypair, keyring = _master_keys(settings)
        zap = context.socket(zmq.ROUTER)
        zap_sockets.append(zap)
        zap.setsockopt(zmq.LINGER, 0)
        zap.bind(ZAP_ENDPOINT)  # before any socket that needs it is bound
        publish = context.socket(zmq.PUB)
        results = context.socket(zmq.PULL)
        control = context.socket(zmq.ROUTER)
        sockets += [publish, results, control]
        publish.setsockopt(zmq.LINGER, 0)
        results.setsockopt(zmq.LINGER, 0)
        control.setsockopt(zmq.LINGER, REPLY_LINGER_MS)
        # A peer sending more than any real message is disconnected by ZeroMQ itself.
        publish.setsockopt(zmq.MAXMSGSIZE, MAX_SUBSCRIPTION_BYTES)
        results.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
        control.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
        secure_server(publish, keypair, DOMAIN_PUBLISH)
        secure_server(results, keypair, DOMAIN_RESULTS)
        secure_server(control, keypair, DOMAIN_CONTROL)
        endpoints: Endpoints = {
            "publish": _bind(publish, settings.bind, settings.port),
            "results": _bind(results, settings.bind, settings.results_port),
            "control": _bind(control, settings.bind, settings.control_port),
        }
        # The same ROUTER, plaintext on ipc:// (security options apply per bind).
        local = _bind_local(control, settings.data_dir)
        if local is not None:
            endpoints["local"] = local
        key_service: zmq.Socket[bytes] | None = None
        if keypair is not None:
            key_service = context.socket(zmq.ROUTER)
            sockets.append(key_service)
            key_service.setsockopt(zmq.LINGER, 0)
            key_service.setsockopt(zmq.MAXMSGSIZE, MAX_KEY_FRAME_BYTES)
            endpoints["key"] = _bind(key_service, settings.bind, settings.key_port)
        snapshots = SnapshotBox(FleetSnapshot(epoch, time.time(), settings.down_after_s, {}))
        metrics = MasterMetrics(host_counter=lambda: snapshots.current.count_up(time.time()))
        gatekeeper = Gatekeeper(
            zap,
            key_service,
            keyring,
            keypair.public if keypair else None,
            on_refusal=metrics.handshake_refused,
        )
        gate_thread = threading.Thread(target=gatekeeper.run, name="gatekeeper", daemon=True)
        gate_thread.start()
        http = HttpServer(
            HttpApp(
                snapshots=snapshots,
                history=ResultsReader(database.path),
                metrics=metrics,
                loopback_only=is_loopback_name(settings.http_bind),
            ),
            settings.http_bind,
            settings.http_port,
        )
        endpoints["http"] = http.url

        master = Master(
            epoch=epoch,
            publisher=Publisher(publish),
            collector=Collector(results, keyring.speaks_for if keyring else None),
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
            metrics=metrics,
            snapshots=snapshots,
            access=Access(keyring),
        )
        master.restore()
        http.start()
        threads = [
            threading.Thread(target=watcher.run, name=f"{watcher.SOURCE}-watcher", daemon=True)
            for watcher in watchers
        ]
        for thread in threads:
            thread.start()
        stop.on_set(lambda: mailbox.post(Wake()))
        restore = stop_on_signals(stop)
        try:
            # Written once a signal stops the master cleanly: whoever reads it may send one.
            _write_endpoints(path, endpoints, epoch)
            log.info("master epoch %d listening: %s", epoch, endpoints)
            if ready is not None:
                ready(endpoints)
            master.run(stop)
        finally:
            restore()
    finally:
        if http is not None:
            http.close()
        for watcher in watchers:
            watcher.stop()
        for thread in threads:
            # A Consul blocking query may hold its thread a while; it is a daemon.
            thread.join(timeout=1.0)
        if gatekeeper is not None and gate_thread is not None:
            gatekeeper.stop()
            gate_thread.join()
        for socket in [*sockets, *zap_sockets]:
            socket.close()
        if keyring is not None:
            keyring.save_if_dirty()
        context.term()
        database.close()
        mailbox.close()
        path.unlink(missing_ok=True)
        # libzmq leaves the socket file behind; operators would wait on it for nothing.
        local_socket_path(settings.data_dir).unlink(missing_ok=True)
        store.close()
        registry.close()
    return 0
