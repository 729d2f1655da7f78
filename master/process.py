"""The master process: the composition root that binds the sockets, starts the watchers,
owns the zmq Context and runs the loop until SIGTERM or SIGINT."""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import zmq

from daybook.cmalloc import find_mallopt
from daybook.config import Settings
from daybook.errors import FleetError, LockError, LockHeldError, RegistryError
from daybook.install.lock import PidLock
from daybook.lifecycle import Lifecycle
from daybook.mailbox import Mailbox
from daybook.model.leadership import Term
from daybook.net.endpoints import (
    MasterEndpoints,
    endpoints_path,
    local_socket_path,
    write_endpoints,
)
from daybook.net.keys import (
    KEYRING_FILE,
    MASTER_KEY,
    KeyPair,
    keys_dir,
    load_keypair_file,
    load_or_create_keypair,
    private_dir,
)
from daybook.net.transport import (
    DOMAIN_CONTROL,
    DOMAIN_PUBLISH,
    DOMAIN_RESULTS,
    MAX_KEY_FRAME_BYTES,
    fetch_master_key,
    local_server,
    secure_server,
)
from daybook.registry.base import Leadership, Registry, open_leadership, open_registry
from daybook.registry.keystore import open_keystore
from daybook.stopping import StopFlag
from daybook.store.base import Presigner, Store, open_store
from daybook.wire import MAX_MESSAGE_BYTES
from master.access import Access
from master.changes import Change, Wake
from master.collector import Collector
from master.control_server import ControlServer
from master.database import ResultsDatabase, ResultsReader
from master.download_desk import Signer
from master.election import Elector, Probe, Prober
from master.gatekeeper import Gatekeeper, ZapPort
from master.heap import find_trim, tune_allocator
from master.http_server import HttpApp, HttpServer, is_loopback_name
from master.keyring import KeyRing
from master.keyring_sync import KeyRingWatcher, KeyRingWriter
from master.ledger import Fleet
from master.master import Master
from master.metrics import MasterMetrics
from master.publisher import Publisher
from master.registry_watcher import RegistryWatcher
from master.snapshot import FleetSnapshot, SnapshotBox
from master.standing import Standing
from master.store_watcher import StoreWatcher
from master.tuning import MasterTuning

log = logging.getLogger(__name__)

DATABASE_FILE = "master.db"
# Held (flock) by the master running on the data dir, for its whole run; names its pid.
LOCK_FILE = "master.lock"
# Answers to operators still queued when the master stops get this long to leave.
REPLY_LINGER_MS = 1000
# How long a stopping master waits for each watcher's thread (it is a daemon).
WATCHER_JOIN_TIMEOUT_S = 1.0
# What a subscriber sends a PUB socket is its subscriptions, a few bytes each; the cap also
# bounds the handshake's commands (a CURVE INITIATE is a few hundred bytes).
MAX_SUBSCRIPTION_BYTES = 4096
# A standby asks the leader's key port whether it lives; an answer takes milliseconds.
PROBE_TIMEOUT_S = 0.8

# Connections waiting to be accepted, per listening socket (libzmq's default is 100). A
# fleet reconnecting after a restart dials in by the thousand; past the backlog, the kernel
# drops SYNs and the minion retries a second or more later. The kernel caps it at
# net.core.somaxconn (4096 by default since Linux 5.4).
LISTEN_BACKLOG = 4096
# The kernel drops the master's end of a minion's link whose peer is gone: probed after a
# minute idle (events are rare), given up after three unanswered probes, or after a minute
# of data unacknowledged. Minions watch their own ends closer (see minion.process); this
# only frees what a vanished minion leaves behind, and costs the master no wake-up.
DEAD_LINK_IDLE_S = 60
DEAD_LINK_PROBE_S = 10
DEAD_LINK_PROBES = 3
DEAD_LINK_UNACKED_MS = 60_000

# Each minion holds two of the master's descriptors (its event and report links); the
# master's own (database, sockets, HTTP, logs) are a few dozen.
FDS_PER_MINION = 2
OWN_FDS = 100
# Below this many minions' worth, the limit is worth a warning (LimitNOFILE in the unit).
FEW_MINIONS = 1000
# A tenth of the limit is left spare: in the reconnect storm after a restart a minion's
# old connection may not be closed yet when its new one is accepted, and with no
# descriptor left libzmq (4.3.5) aborts the process when the local operator socket accepts.
FD_HEADROOM = 0.1
# Where the hard limit is unlimited, the soft one cannot be: Linux's usual fs.nr_open.
NR_OPEN = 1_048_576

Endpoints = dict[str, str]
# How the watcher threads hand their reads to the loop: its mailbox.
Post = Callable[[Change], None]


# Where the ports a master's peers derive from its publish port sit (HTTP, +3, is the
# master's own business); and how often a row of them is tried with port 0.
PORT_OFFSETS = {"results": 1, "control": 2, "key": 4}
ROW_ATTEMPTS = 50


def _bind(socket: zmq.Socket[bytes], host: str, port: int) -> str:
    # Port 0 asks the OS for a free port; ZeroMQ spells that `*`.
    endpoint = f"tcp://{host}:{port or '*'}"
    try:
        socket.bind(endpoint)
    except zmq.ZMQError as exc:
        raise FleetError(f"cannot listen on {endpoint}: {exc}") from None
    return socket.getsockopt_string(zmq.LAST_ENDPOINT)


def raise_open_file_limit() -> int:
    """Raise the soft open-file limit to the hard one, as a server holding a connection
    per peer should; how many minions the limit in force leaves room for."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = NR_OPEN if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (ValueError, OSError) as exc:
            log.info("cannot raise the open-file limit from %d to %d: %s", soft, wanted, exc)
    room = max(0, (int(soft * (1 - FD_HEADROOM)) - OWN_FDS) // FDS_PER_MINION)
    log.log(
        logging.WARNING if room < FEW_MINIONS else logging.INFO,
        "open-file limit %d: room for about %d minions (two connections each, a tenth "
        "spare; raise LimitNOFILE in the master's systemd unit for more)",
        soft,
        room,
    )
    return room


def serve_a_fleet(socket: zmq.Socket[bytes]) -> None:
    """Tune a socket minions connect to: a deep listen backlog, and the kernel closing
    connections to peers that are gone."""
    socket.setsockopt(zmq.BACKLOG, LISTEN_BACKLOG)
    socket.setsockopt(zmq.TCP_KEEPALIVE, 1)
    socket.setsockopt(zmq.TCP_KEEPALIVE_IDLE, DEAD_LINK_IDLE_S)
    socket.setsockopt(zmq.TCP_KEEPALIVE_INTVL, DEAD_LINK_PROBE_S)
    socket.setsockopt(zmq.TCP_KEEPALIVE_CNT, DEAD_LINK_PROBES)
    socket.setsockopt(zmq.TCP_MAXRT, DEAD_LINK_UNACKED_MS)


def _bind_local(life: Lifecycle, socket: zmq.Socket[bytes], data_dir: Path) -> str | None:
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
    # libzmq leaves the file behind; operators would wait on it for nothing. Only once bound
    # is it this master's to remove: before, it may be another's.
    life.release(lambda: path.unlink(missing_ok=True))
    os.chmod(path, 0o600)
    return endpoint


def _master_keys(life: Lifecycle, settings: Settings) -> tuple[KeyPair | None, KeyRing | None]:
    """The master's key pair and the fleet's key ring; none of either with the insecure
    opt-out. The key ring is the one in the registry backend, shared by every master."""
    if settings.insecure_transport:
        log.warning(
            "INSECURE TRANSPORT (insecure_transport = true): no encryption, no key "
            "authentication. Anyone who can reach ports %d-%d can read every event and report "
            "for any host. For benchmarks only; never in production.",
            settings.port,
            settings.results_port,
        )
        return None, None
    keypair = _master_keypair(settings)
    if settings.auto_accept:
        log.warning(
            "auto_accept is on: every new minion key is accepted without an operator; "
            "for trials and tests only"
        )
    store = open_keystore(settings.registry, key_prefix=settings.consul_key_prefix)
    life.release(store.close)
    copy = keys_dir(settings.data_dir) / KEYRING_FILE
    keyring = KeyRing.open(store, auto_accept=settings.auto_accept, cache_path=copy)
    life.release(keyring.save_if_dirty)
    _start_keyring_sync(life, keyring)
    listing = keyring.listing()
    log.info(
        "the key ring is shared through %s: %d accepted, %d pending, %d rejected",
        store.url,
        len(listing.accepted),
        len(listing.pending),
        len(listing.rejected),
    )
    return keypair, keyring


def _master_keypair(settings: Settings) -> KeyPair:
    """The fleet's shared key pair (`master_key_file`), else this master's own."""
    directory = keys_dir(settings.data_dir)
    if settings.master_key_file is not None:
        private_dir(directory)  # the local socket and the old key ring live there too
        keypair = load_keypair_file(settings.master_key_file, "master_key_file")
        created = False
    else:
        keypair, created = load_or_create_keypair(directory, MASTER_KEY)
    log.log(
        logging.WARNING if created else logging.INFO,
        "%s master key %s (public key %s)",
        "created the" if created else "using the",
        keypair.fingerprint,
        keypair.public,
    )
    return keypair


def _start_keyring_sync(life: Lifecycle, keyring: KeyRing) -> None:
    """The threads that write this master's key notes to the shared store and follow the
    other masters' changes (see master.keyring_sync)."""
    assert keyring.store is not None
    writer = KeyRingWriter(keyring)
    life.start_thread(writer.run, name="keyring-writer", stop=writer.stop)
    watcher = KeyRingWatcher(keyring, keyring.store)
    # A Consul blocking query may hold its thread a while: it is joined only so long.
    life.start_thread(
        watcher.run,
        name="keyring-watcher",
        stop=watcher.stop,
        join_timeout_s=WATCHER_JOIN_TIMEOUT_S,
    )


@dataclass(frozen=True)
class MasterSockets:
    """The master's sockets, bound; `key` only with CURVE (it hands out the public key)."""

    zap: ZapPort
    publish: zmq.Socket[bytes]
    results: zmq.Socket[bytes]
    control: zmq.Socket[bytes]
    key: zmq.Socket[bytes] | None
    endpoints: Endpoints


def _bind_sockets(life: Lifecycle, settings: Settings, keypair: KeyPair | None) -> MasterSockets:
    # Bound first and closed last, so that every handshake gets an answer (its sockets
    # refuse any while no ZAP handler is bound).
    zap = ZapPort(life.context)
    life.closes(zap.close, last=True)
    publish = life.socket(zmq.PUB, linger_ms=0)
    results = life.socket(zmq.PULL, linger_ms=0)
    control = life.socket(zmq.ROUTER, linger_ms=REPLY_LINGER_MS)
    # A peer sending more than any real message is disconnected by ZeroMQ itself.
    publish.setsockopt(zmq.MAXMSGSIZE, MAX_SUBSCRIPTION_BYTES)
    results.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
    control.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
    for minions_link in (publish, results):
        serve_a_fleet(minions_link)
    secure_server(publish, keypair, DOMAIN_PUBLISH)
    secure_server(results, keypair, DOMAIN_RESULTS)
    secure_server(control, keypair, DOMAIN_CONTROL)
    key: zmq.Socket[bytes] | None = None
    if keypair is not None:
        key = life.socket(zmq.ROUTER, linger_ms=0)
        key.setsockopt(zmq.MAXMSGSIZE, MAX_KEY_FRAME_BYTES)
    ports = [
        ("publish", publish, settings.port),
        ("results", results, settings.results_port),
        ("control", control, settings.control_port),
    ]
    if key is not None:
        ports.append(("key", key, settings.key_port))
    if any(port for _name, _socket, port in ports):
        endpoints: Endpoints = {
            name: _bind(socket, settings.bind, port) for name, socket, port in ports
        }
    else:
        endpoints = _bind_in_a_row(settings.bind, ports)
    # The same ROUTER, plaintext on ipc:// (security options apply per bind).
    local = _bind_local(life, control, settings.data_dir)
    if local is not None:
        endpoints["local"] = local
    return MasterSockets(zap, publish, results, control, key, endpoints)


def _bind_in_a_row(host: str, ports: list[tuple[str, zmq.Socket[bytes], int]]) -> Endpoints:
    """Port 0 everywhere: the publish port is the OS's choice and the others follow it at
    their usual offsets (results +1, control +2, key +4), so that minions and operators
    given several masters by publish port alone (`master = "h:P1,h:P2"`, as a test fleet
    on one machine is) reach each one. A port in the row already taken starts the row over
    elsewhere: the bind itself decides, nothing is probed first."""
    (first_name, first, _), rest = ports[0], ports[1:]
    for _attempt in range(ROW_ATTEMPTS):
        bound = {first_name: _bind(first, host, 0)}
        base = int(bound[first_name].rsplit(":", 1)[1])
        try:
            for name, socket, _port in rest:
                bound[name] = _bind(socket, host, base + PORT_OFFSETS[name])
        except FleetError:
            for name, socket, _port in ports:
                if name in bound:
                    socket.unbind(bound[name])
            continue
        return bound
    # Ephemeral ports all but used up (tens of thousands of connections on this host):
    # each port on its own then, which one master needs and its peers read from
    # master.json.
    log.warning("found no %d free ports in a row; listening on ports apart", len(ports))
    return {name: _bind(socket, host, 0) for name, socket, _port in ports}


def _start_gatekeeper(
    life: Lifecycle,
    sockets: MasterSockets,
    keypair: KeyPair | None,
    keyring: KeyRing | None,
    metrics: MasterMetrics,
) -> None:
    """The ZAP handler and the key port, on a thread of their own (see master.gatekeeper)."""
    gatekeeper = Gatekeeper(
        sockets.zap,
        sockets.key,
        keyring,
        keypair.public if keypair else None,
        on_refusal=metrics.handshake_refused,
        # A shared key ring is written by a thread of its own, never by the ZAP handler.
        saves_keyring=keyring is None or keyring.store is None,
    )
    life.start_thread(gatekeeper.run, name="gatekeeper", stop=gatekeeper.stop)


def _start_watchers(
    life: Lifecycle, settings: Settings, registry: Registry, store: Store, post: Post
) -> dict[str, Callable[[], None]]:
    """The registry and store watchers, on threads of their own; returns the refreshers
    of those an operator sync can ask to read again."""
    registry_watcher = RegistryWatcher(
        registry,
        post,
        blocking=not settings.registry.startswith("file:"),
        interval_s=settings.registry_poll_interval_s,
    )
    store_watcher = StoreWatcher(store, post, interval_s=settings.store_poll_interval_s)
    refreshers = {StoreWatcher.SOURCE: store_watcher.refresh}
    if registry_watcher.refreshable:  # a blocking query cannot be cut short, nor need be
        refreshers = {RegistryWatcher.SOURCE: registry_watcher.refresh, **refreshers}
    for watcher in (registry_watcher, store_watcher):
        # A Consul blocking query may hold its thread a while: it is joined only so long.
        life.start_thread(
            watcher.run,
            name=f"{watcher.SOURCE}-watcher",
            stop=watcher.stop,
            join_timeout_s=WATCHER_JOIN_TIMEOUT_S,
        )
    return refreshers


def _signer(store: Store) -> Signer | None:
    """With S3, minions download through URLs the master signs: they hold no credentials.
    A local store has no URLs; minions read its directory."""
    return store.presign if isinstance(store, Presigner) else None


def _tune_process() -> Callable[[], None]:
    """Room for a fleet's connections, and the C heap tuned for them (master.heap); the
    call that hands freed memory back on the trim timer."""
    raise_open_file_limit()
    return find_trim(tune_allocator(os.environ, find_mallopt()))


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
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    # First of all: a second master on this data dir must touch nothing of the first's.
    with _data_dir_lock(settings.data_dir):
        return _serve(settings, ready, stop)


@contextlib.contextmanager
def _data_dir_lock(data_dir: Path) -> Iterator[None]:
    """Hold the data dir for this master's run. A second master started on it by mistake
    would bump the epoch in the results database the first one writes, and take over (then
    remove) its local operator socket, locking operators out; it is refused at once instead."""
    lock = PidLock(data_dir / LOCK_FILE, timeout_s=0)
    try:
        lock.acquire()
    except LockHeldError as held:
        holder = f"pid {held.holder_pid}" if held.holder_pid is not None else "pid unknown"
        raise LockError(f"another master ({holder}) is running with data dir {data_dir}") from None
    try:
        yield
    finally:
        lock.release()


def _serve(
    settings: Settings,
    ready: Callable[[Endpoints], None] | None,
    stop: StopFlag | None,
) -> int:
    """The master's run, once it holds its data dir (see `run_master`)."""
    release_memory = _tune_process()
    with Lifecycle(stop) as life:
        registry = open_registry(settings.registry, key_prefix=settings.consul_key_prefix)
        life.release(registry.close)
        store = open_store(settings.store)
        life.release(store.close)
        database = ResultsDatabase(settings.data_dir / DATABASE_FILE)
        life.release(database.close)
        mailbox: Mailbox[Change] = Mailbox()
        life.release(mailbox.close)
        life.stop.on_set(lambda: mailbox.post(Wake()))
        epoch = database.next_epoch()
        keypair, keyring = _master_keys(life, settings)
        sockets = _bind_sockets(life, settings, keypair)
        snapshots = SnapshotBox(FleetSnapshot(epoch, time.time(), settings.down_after_s, {}))
        metrics = MasterMetrics(host_counter=lambda: snapshots.current.count_up(time.time()))
        _start_gatekeeper(life, sockets, keypair, keyring, metrics)
        http = _http_server(settings, snapshots, database, metrics)
        life.worker(stop=http.close)
        refreshers = _start_watchers(life, settings, registry, store, mailbox.post)
        standing = _start_election(life, settings, sockets.endpoints["publish"], mailbox.post)
        master = Master(
            epoch=epoch,
            publisher=Publisher(sockets.publish),
            collector=Collector(sockets.results, keyring.speaks_for if keyring else None),
            control=ControlServer(sockets.control),
            database=database,
            fleet=Fleet(settings.down_after_s, database.load_hosts(), listening_since=time.time()),
            mailbox=mailbox,
            tuning=tuning_from(settings),
            refreshers=refreshers,
            metrics=metrics,
            snapshots=snapshots,
            access=Access(keyring),
            signer=_signer(store),
            # Rollouts that carry a pin store it beside the mappings, as `daybook pin` does.
            pins=registry,
            standing=standing,
            release_memory=release_memory,
        )
        master.restore()
        http.start()
        _announce(life, settings, {**sockets.endpoints, "http": http.url}, epoch, ready)
        life.run(master.run)
    return 0


def _advertised(settings: Settings, publish_endpoint: str) -> str:
    """This master's address in the leader lock; with an ephemeral publish port (tests),
    the port bound."""
    if settings.port:
        return settings.advertised_address
    # `advertise` may name the host alone; the port is then the one bound.
    host = settings.advertise or settings.hostname
    return f"{host}:{publish_endpoint.rpartition(':')[2]}"


def _start_election(
    life: Lifecycle, settings: Settings, publish_endpoint: str, post: Post
) -> Standing:
    """Take the leader lock if it is free (a master alone leads from its first event), and
    start the elector that keeps it, or takes it when it frees; a stop releases it at once,
    before the loop drains and the sockets close, so a standby takes over within moments."""
    address = _advertised(settings, publish_endpoint)
    leadership = open_leadership(settings.registry, key_prefix=settings.consul_key_prefix)
    life.release(leadership.close)
    term, leader = _first_try(leadership, address)
    elector = Elector(leadership, address, post, term=term)
    life.stop.on_set(elector.stop)
    life.start_thread(
        elector.run, name="elector", stop=elector.stop, join_timeout_s=WATCHER_JOIN_TIMEOUT_S
    )
    probe = _key_port_probe(life, settings)
    if probe is not None and settings.registry.startswith("consul"):  # a lease frees itself
        # A client of its own: the elector's may be held in a blocking query.
        deposer = open_leadership(settings.registry, key_prefix=settings.consul_key_prefix)
        life.release(deposer.close)
        prober = Prober(elector, deposer, probe)
        life.start_thread(prober.run, name="prober", stop=prober.stop)
    if term is not None:
        log.info("leading the fleet as %s: term %d", address, term.number)
        return Standing(address, term)
    log.info("standing by as %s; the leader is %s", address, leader.holder if leader else "unknown")
    return Standing.standby(address, leader)


def _first_try(leadership: Leadership, address: str) -> tuple[Term | None, Term | None]:
    """The term taken now, or who leads instead; the backend unreachable: neither (the
    elector keeps trying)."""
    try:
        term = leadership.acquire(address)
        return term, (term if term is not None else leadership.leader())
    except RegistryError:
        return None, None  # standing by meanwhile; the elector says so, and keeps trying


def _key_port_probe(life: Lifecycle, settings: Settings) -> Probe | None:
    """Whether a leader answers on its key port (at the same offset from its publish port
    as this master's); None without key ports (the insecure opt-out, or port 0)."""
    if settings.insecure_transport or not settings.key_port:
        return None
    offset = settings.key_port - settings.port

    def probe(term: Term) -> bool:
        host, _, port = term.holder.rpartition(":")
        if not host or not port.isdigit():
            return True  # not an address to probe: never depose on that
        endpoint = f"tcp://{host}:{int(port) + offset}"
        try:
            fetch_master_key(life.context, endpoint, timeout_s=PROBE_TIMEOUT_S)
        except zmq.ZMQError:
            return True  # an address this master cannot even try: no sign of death
        except FleetError:
            return False  # silence, or no key: what a dead or stuck leader gives
        return True

    return probe


def _http_server(
    settings: Settings, snapshots: SnapshotBox, database: ResultsDatabase, metrics: MasterMetrics
) -> HttpServer:
    app = HttpApp(
        snapshots=snapshots,
        history=ResultsReader(database.path),
        metrics=metrics,
        loopback_only=is_loopback_name(settings.http_bind),
    )
    return HttpServer(app, settings.http_bind, settings.http_port)


def _announce(
    life: Lifecycle,
    settings: Settings,
    endpoints: Endpoints,
    epoch: int,
    ready: Callable[[Endpoints], None] | None,
) -> None:
    """Tell operators (master.json) and the caller (`ready`) where the master listens."""
    # Written once a signal stops the master cleanly: whoever reads it may send one.
    write_endpoints(settings.data_dir, MasterEndpoints.bound(endpoints, epoch))
    life.release(lambda: endpoints_path(settings.data_dir).unlink(missing_ok=True))
    log.info("master epoch %d listening: %s", epoch, endpoints)
    if ready is not None:
        ready(endpoints)


def tuning_from(settings: Settings) -> MasterTuning:
    """The knobs of the loop that the settings give; the rest keep their defaults."""
    return MasterTuning(
        republish_interval_s=settings.republish_interval_s,
        sync_deadline_s=settings.sync_deadline_s,
        download_url_expiry_s=settings.download_url_expiry_s,
        download_starts_per_s=settings.download_starts_per_s,
        heartbeat_interval_s=settings.heartbeat_interval_s,
        max_heartbeats_per_s=settings.max_heartbeats_per_s,
    )
