"""The minion process: the composition root that builds a minion, owns the zmq Context and
runs the loop until SIGTERM or SIGINT."""

from __future__ import annotations

import logging
import random
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import zmq

from daybook.config import Settings
from daybook.errors import ConfigError, FleetError
from daybook.install.installer import Installer, Selections
from daybook.lifecycle import Lifecycle
from daybook.mailbox import Mailbox
from daybook.model.messages import MAX_FRAME_BYTES
from daybook.model.results import ServiceResults
from daybook.net.client import ControlClient
from daybook.net.endpoints import master_endpoint_for, master_endpoints
from daybook.net.keys import MINION_KEY, KeyPair, keys_dir, load_or_create_keypair
from daybook.net.transport import (
    ClientCredentials,
    fetch_first_master_key,
    secure_client,
    trusted_master_key,
)
from daybook.stopping import StopFlag
from daybook.store.base import Store, open_store
from daybook.store.signed import SignedStore
from daybook.wire import TOPIC_SYNC
from minion.desired import DesiredStateCache
from minion.downloads import ask_master
from minion.enrollment import Enrollment
from minion.install_child import ChildInstaller
from minion.loop import MinionLoop
from minion.memory import MinionMemory
from minion.minion import LoopTask, Minion
from minion.reporter import Reporter
from minion.subscriber import EventSubscriber
from minion.sync import ServiceApplier, Syncer, start_daemon_thread

if TYPE_CHECKING:
    from daybook.install.releases import ReleaseKeeper

log = logging.getLogger(__name__)

# Reports and heartbeats queued while the master is away; beyond this they are dropped.
REPORT_QUEUE_MAX = 1000
# How long closing the PUSH socket may take to hand over what is still queued.
REPORT_LINGER_MS = 2000
# Each minion draws its reconnect interval and cap from these ranges. libzmq adds less than
# one base interval of jitter to each retry and doubles the interval up to the cap, so with
# one cap for all, a fleet that lost its master together keeps retrying almost in step and
# its handshakes reach the restarted master in waves; drawn caps spread them out.
RECONNECT_IVL_RANGE_MS = (100, 500)
RECONNECT_CAP_RANGE_MS = (2000, 5000)
# A link to the master silent for this many heartbeat intervals is dropped and dialled
# again. Without it a SUB socket, which never sends, waits forever on a connection whose
# other end is gone (the master's host rebooted, a NAT or firewall forgot the flow).
LINK_TIMEOUT_INTERVALS = 3
# Once a link has been idle, its keep-alive probes go this far apart until one is answered.
KEEPALIVE_PROBE_S = 1
# An accepted minion says hello again every this many heartbeat intervals, so that a key
# deleted on the master is pending again soon (30 s at the default 5 s).
HELLO_HEARTBEATS = 6
# TCP keep-alive counts whole seconds.
MIN_KEEPALIVE_S = 1
# How long a stopping minion waits for its sync thread once the install child is killed.
CHILD_REAP_TIMEOUT_S = 5.0


def reconnect_intervals(rng: random.Random) -> tuple[int, int]:
    """A minion's own ZMQ_RECONNECT_IVL and ZMQ_RECONNECT_IVL_MAX, in milliseconds."""
    return rng.randint(*RECONNECT_IVL_RANGE_MS), rng.randint(*RECONNECT_CAP_RANGE_MS)


@dataclass(frozen=True)
class KeepAlive:
    """How the kernel watches one idle link to the master: the first probe after `idle_s`
    without traffic, then one every `probe_s` while unanswered, the link dropped after
    `probes` of them, or when data has waited `timeout_ms` for its acknowledgement."""

    idle_s: int
    probe_s: int
    probes: int

    @property
    def timeout_ms(self) -> int:
        return (self.idle_s + self.probe_s * self.probes) * 1000


def link_keepalive(heartbeat_interval_s: float, rng: random.Random) -> KeepAlive:
    """A link's keep-alive: dead within LINK_TIMEOUT_INTERVALS heartbeats, with an idle
    time of its own between one and two intervals.

    A broadcast leaves every event link (SUB) idle at the same moment, and the kernel's
    timer wheel fires timers that close together at once; with one idle time for all, the
    whole fleet probed the master in one burst every interval. In the swarm bench (8,900
    links through one loopback device, whose queue holds 1,000 packets a CPU) a tenth of
    those probes were dropped, and a link that loses two in a row is reset and dialled
    again: a CURVE handshake for the master each time. Drawn idle times split the burst,
    and the retries, a second apart, miss the next one.
    """
    interval_s = max(MIN_KEEPALIVE_S, round(heartbeat_interval_s))
    idle_s = rng.randint(interval_s, 2 * interval_s)
    timeout_s = interval_s * LINK_TIMEOUT_INTERVALS
    return KeepAlive(
        idle_s=idle_s,
        probe_s=KEEPALIVE_PROBE_S,
        probes=(timeout_s - idle_s) // KEEPALIVE_PROBE_S,
    )


def keep_link_alive(socket: zmq.Socket[bytes], keepalive: KeepAlive) -> None:
    """Let the kernel drop a dead link to the master, and bound each connection attempt.

    The kernel does the watching, not ZeroMQ's own heartbeats: a ZMTP PING is a CURVE
    message that the master's I/O thread decrypts and answers, two links a minion, which
    made most of a large fleet's idle load on the master. A keep-alive probe is answered
    by the master's kernel without waking the master. An idle link (SUB: events are rare)
    is probed as `keepalive` says; a link with data unacknowledged as long (PUSH: a
    heartbeat goes every interval) is given up by the TCP user timeout (ZMQ_TCP_MAXRT).
    """
    socket.setsockopt(zmq.TCP_KEEPALIVE, 1)
    socket.setsockopt(zmq.TCP_KEEPALIVE_IDLE, keepalive.idle_s)
    socket.setsockopt(zmq.TCP_KEEPALIVE_INTVL, keepalive.probe_s)
    socket.setsockopt(zmq.TCP_KEEPALIVE_CNT, keepalive.probes)
    socket.setsockopt(zmq.TCP_MAXRT, keepalive.timeout_ms)
    # A connect stuck in SYN retries (the link is down) gives way to a fresh one.
    socket.setsockopt(zmq.CONNECT_TIMEOUT, keepalive.timeout_ms)


@dataclass(frozen=True)
class MinionSpec:
    """Who one minion is and where it keeps its files; a process may run many."""

    host: str
    data_dir: Path
    install_dir: Path


def connect_sockets(
    context: zmq.Context[zmq.Socket[bytes]],
    settings: Settings,
    credentials: ClientCredentials | None,
    rng: random.Random | None = None,
) -> tuple[EventSubscriber, list[Reporter]]:
    """One minion's SUB socket for the events of every master, and a PUSH socket per master
    for its reports: a PUSH connected to several would deal them out round-robin, and each
    master (the standbys too, so that a new leader has every report) needs all of them.
    Each socket draws its own reconnect intervals from `rng`, so a fleet reconnecting
    after a master restart spreads out."""
    rng = rng or random.Random()
    subscriber_socket = context.socket(zmq.SUB)
    subscriber_socket.setsockopt(zmq.LINGER, 0)
    subscriber_socket.setsockopt(zmq.MAXMSGSIZE, MAX_FRAME_BYTES + 64 * 1024)
    _link_options(subscriber_socket, settings, credentials, rng)
    subscriber_socket.setsockopt(zmq.SUBSCRIBE, TOPIC_SYNC)
    reporters = [
        _reporter(context, settings, credentials, endpoint, rng)
        for endpoint in master_endpoints(settings, settings.results_port)
    ]
    # Only the leader publishes; a deposed one is fenced off by its term (see Minion).
    for endpoint in master_endpoints(settings, settings.port):
        subscriber_socket.connect(endpoint)
    return EventSubscriber(subscriber_socket), reporters


def _link_options(
    socket: zmq.Socket[bytes],
    settings: Settings,
    credentials: ClientCredentials | None,
    rng: random.Random,
) -> None:
    interval_ms, cap_ms = reconnect_intervals(rng)
    socket.setsockopt(zmq.RECONNECT_IVL, interval_ms)
    socket.setsockopt(zmq.RECONNECT_IVL_MAX, cap_ms)
    keep_link_alive(socket, link_keepalive(settings.heartbeat_interval_s, rng))
    secure_client(socket, credentials)


def _reporter(
    context: zmq.Context[zmq.Socket[bytes]],
    settings: Settings,
    credentials: ClientCredentials | None,
    endpoint: str,
    rng: random.Random,
) -> Reporter:
    """A PUSH socket to one master's results port, watched for reconnects."""
    push_socket = context.socket(zmq.PUSH)
    push_socket.setsockopt(zmq.LINGER, REPORT_LINGER_MS)
    push_socket.setsockopt(zmq.SNDHWM, REPORT_QUEUE_MAX)
    _link_options(push_socket, settings, credentials, rng)
    # Nothing but the handshake comes back this way; the cap bounds what a peer could send.
    push_socket.setsockopt(zmq.MAXMSGSIZE, 4096)
    # Watched from before the first connect, so the reporter can tell a reconnect from it.
    link_events = push_socket.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED)
    link_events.setsockopt(zmq.LINGER, 0)
    push_socket.connect(endpoint)
    return Reporter(push_socket, link_events)


def release_keeper(settings: Settings, spec: MinionSpec) -> ReleaseKeeper | None:
    """The release lifecycle (retention, `current`, hooks) when it is on for any service;
    None leaves installs exactly as they were without it, and loads nothing for it."""
    if not settings.release_lifecycle_on:
        return None
    from daybook.install.hooks import HookRunner
    from daybook.install.releases import ReleaseKeeper

    return ReleaseKeeper(
        spec.install_dir,
        settings.release_policy,
        HookRunner(settings.hooks_path, timeout_s=settings.hook_timeout_s),
        revert_on_hook_failure=settings.revert_on_hook_failure,
    )


def connect_minion(
    context: zmq.Context[zmq.Socket[bytes]],
    settings: Settings,
    spec: MinionSpec,
    *,
    store: Store,
    mailbox: Mailbox[LoopTask],
    cache: DesiredStateCache,
    stop: StopFlag,
    spawn: Callable[[LoopTask], None] = start_daemon_thread,
    persist: Callable[[LoopTask], None] = lambda save: save(),
    credentials: ClientCredentials | None = None,
    install: Callable[[Sequence[str], Selections], ServiceResults] | None = None,
) -> Minion:
    """Build one minion with its own SUB and PUSH sockets, connected to the master (over
    CURVE with `credentials`; None is the insecure opt-out). `install` replaces the
    in-process installer for syncs that download (a child process: see run_minion)."""
    rng = random.Random()
    subscriber, reporters = connect_sockets(context, settings, credentials, rng)

    def splay(spread_s: float | None) -> bool:
        window_s = settings.splay_s if spread_s is None else min(spread_s, settings.splay_s)
        return not stop.wait(rng.uniform(0, window_s)) if window_s > 0 else True

    memory = MinionMemory(spec.data_dir, spec.install_dir)
    installer = Installer(
        store,
        spec.install_dir,
        max_parallel=settings.max_parallel_downloads,
        # A download retry waits no longer than the minion keeps running.
        pause=lambda seconds: not stop.wait(seconds),
    )
    applier = ServiceApplier(installer, memory, splay, install, release_keeper(settings, spec))
    syncer = Syncer(spec.host, applier, cache, memory)
    return Minion(
        host=spec.host,
        subscriber=subscriber,
        reporter=reporters[0],
        more_reporters=reporters[1:],
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


def minion_keypair(settings: Settings, spec: MinionSpec) -> KeyPair | None:
    """This minion's key pair, created in its data dir on first start; None when insecure."""
    if settings.insecure_transport:
        return None
    keypair, created = load_or_create_keypair(keys_dir(spec.data_dir), MINION_KEY)
    if created:
        log.info(
            "created the key of minion %s: %s; an operator accepts it on the master with "
            "`daybook keys accept %s`",
            spec.host,
            keypair.fingerprint,
            spec.host,
        )
    return keypair


def master_key(
    settings: Settings, context: zmq.Context[zmq.Socket[bytes]], stop: StopFlag
) -> str | None:
    """The master's public key this node trusts (learnt and pinned on first contact, which
    waits for the master); None when insecure."""
    if settings.insecure_transport:
        log.warning(
            "INSECURE TRANSPORT (insecure_transport = true): events and reports travel in "
            "plaintext and nobody is authenticated; for benchmarks only, never in production"
        )
        return None
    return trusted_master_key(settings, context, wait=stop.wait)


def start_enrollment(
    context: zmq.Context[zmq.Socket[bytes]],
    settings: Settings,
    credentials: ClientCredentials,
    stop: StopFlag,
    heartbeat_s: Callable[[], float] | None = None,
) -> Enrollment | None:
    """Say hello to the master on a thread of its own (see minion.enrollment), once accepted
    every HELLO_HEARTBEATS heartbeat intervals: `heartbeat_s` gives the one in force, which a
    large fleet's master makes longer (the settings' own without it)."""
    if not settings.control_port:
        log.info("the master's control port is unknown (0): this minion does not say hello")
        return None
    # Paced by the heartbeat: a few seconds in production, moments in a test fleet.
    beat_s = settings.heartbeat_interval_s
    pace = heartbeat_s or (lambda: beat_s)
    # The first master that answers, then the one that answered last; a standby points
    # to the leader.
    client = ControlClient(
        master_endpoints(settings, settings.control_port),
        timeout_s=min(3.0, max(1.0, 5 * beat_s)),
        context=context,
        credentials=credentials,
        host=settings.hostname,
        locate=lambda holder: master_endpoint_for(settings, holder, settings.control_port),
        keep_connections=True,
    )
    key_endpoints = master_endpoints(settings, settings.key_port) if settings.key_port else ()
    enrollment = Enrollment(
        host=settings.hostname,
        own_fingerprint=credentials.keypair.fingerprint,
        trusted_key=credentials.server_key,
        hello=lambda: client.hello(settings.hostname, "minion"),
        fetch_master_key=(
            (lambda: fetch_first_master_key(context, key_endpoints)[0]) if key_endpoints else None
        ),
        pending_interval_s=min(2.0, max(0.2, beat_s)),
        accepted_interval_s=lambda: max(1.0, HELLO_HEARTBEATS * pace()),
        close=client.close,
    )
    # Not joined: the Context's term ends a hello in flight, and the stop flag the waits.
    threading.Thread(target=enrollment.run, args=(stop,), name="enrollment", daemon=True).start()
    return enrollment


def close_minion(minion: Minion) -> None:
    minion.subscriber.socket.close()
    for reporter in minion.reporters:
        reporter.close()


def client_credentials(keypair: KeyPair | None, server_key: str | None) -> ClientCredentials | None:
    """CURVE credentials from both keys; None (plaintext) in the insecure opt-out."""
    if keypair is None or server_key is None:
        return None
    return ClientCredentials(keypair, server_key)


def run_minion(
    settings: Settings,
    *,
    stop: StopFlag | None = None,
    drain_timeout_s: float = 10.0,
) -> int:
    """Run one minion in the foreground until `stop` is set or a signal arrives."""
    check_master_ports(settings)
    spec = MinionSpec(settings.hostname, settings.data_dir, settings.install_dir)
    spec.data_dir.mkdir(parents=True, exist_ok=True)
    # Signals count from the start: a minion still waiting for its master's key stops too.
    with Lifecycle(stop) as life:
        mailbox: Mailbox[LoopTask] = Mailbox()
        life.release(mailbox.close)
        keypair = minion_keypair(settings, spec)
        try:
            server_key = master_key(settings, life.context, life.stop)
        except FleetError:
            if life.stop.is_set():
                return 0
            raise
        credentials = client_credentials(keypair, server_key)
        store, installs = minion_store(life, settings, spec, credentials)
        minion = connect_minion(
            life.context,
            settings,
            spec,
            store=store,
            mailbox=mailbox,
            cache=DesiredStateCache(),
            stop=life.stop,
            credentials=credentials,
            install=installs.sync if installs else None,
        )
        life.closes(lambda: close_minion(minion))
        if credentials is not None:
            start_enrollment(
                life.context,
                settings,
                credentials,
                life.stop,
                heartbeat_s=lambda: minion.heartbeat_interval_s,
            )
        loop = MinionLoop([minion], mailbox)
        life.stop.on_set(lambda: mailbox.post(lambda: None))
        log.info(
            "minion %s following the master(s) at %s (reports to port %d)",
            spec.host,
            ", ".join(master_endpoints(settings, settings.port)),
            settings.results_port,
        )
        life.run(loop.run)
        _drain(minion, loop, installs, drain_timeout_s)
    return 0


def minion_store(
    life: Lifecycle, settings: Settings, spec: MinionSpec, credentials: ClientCredentials | None
) -> tuple[Store, ChildInstaller | None]:
    """The store a minion installs from, and the child process that installs for it if any.

    An S3 store is read through URLs the master signs (`signed_downloads`): no credentials
    and no S3 client, so installs run in the minion itself. Otherwise downloads run in a
    child process, which alone loads the store's client, so the minion stays small for its
    whole life; the lazy store then serves only the parent's installed-versions reads.
    """
    if settings.signed_downloads and settings.store.startswith("s3:") and settings.control_port:
        ask = ask_master(
            life.context,
            master_endpoints(settings, settings.control_port),
            spec.host,
            credentials,
            locate=lambda holder: master_endpoint_for(settings, holder, settings.control_port),
        )
        return SignedStore(settings.store, ask, pause=lambda s: not life.stop.wait(s)), None
    store = open_store(settings.store, lazy=True)
    life.release(store.close)
    installs = ChildInstaller(
        settings.store, spec.install_dir, max_parallel=settings.max_parallel_downloads
    )
    # No install outlives the minion, however it stops.
    life.worker(stop=installs.kill)
    # A stopping minion's child gives up retrying downloads, as the minion itself would.
    life.stop.on_set(installs.stop)
    return store, installs


def _drain(
    minion: Minion, loop: MinionLoop, installs: ChildInstaller | None, timeout_s: float
) -> None:
    """Let the sync in progress finish, for `timeout_s` at most, and send the last reports
    before the sockets close."""
    if not minion.stop(timeout_s):
        # The child is ended and reaped (the next install removes its staging tree), and
        # its sync is abandoned unreported. An install in this process gives up at its
        # next pause, the stop flag being set.
        if installs is not None:
            installs.kill()
        minion.worker.wait_idle(CHILD_REAP_TIMEOUT_S)
    loop.run_tasks()
