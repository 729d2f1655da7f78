"""The operator client: asks the master for a sync or the fleet's status, and renders the
answers as the CLI contract's JSON. With several masters it asks the first that answers and
follows a standby to the leader it names.

Every request goes out on a fresh DEALER socket and waits a bounded time, so a dead or
unreachable master gives a one-line `FleetError`, never a hang. Waiting for a sync is a
series of long polls: the master answers the moment the last expected host reports, and a
master restarted in the meantime is simply asked again.

Operators reach the master through its local socket (`<data dir>/run/control.sock`, in a
directory only the master's user may enter) when they share its data dir, and otherwise over
CURVE with this node's operator key, which the master must have accepted.
"""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from socket import AF_UNIX, SOCK_STREAM
from socket import socket as stream_socket

import zmq

from daybook import wire
from daybook.config import Settings
from daybook.errors import FleetError, InputError, WireError
from daybook.model.downloads import Download
from daybook.model.fleet import FleetStatus
from daybook.model.keys import Key, KeyListing
from daybook.model.leadership import Term
from daybook.model.messages import (
    MAX_FRAME_BYTES,
    OP_DOWNLOADS,
    OP_HELLO,
    OP_KEYS_LIST,
    OP_STATUS,
    OP_STORE_CHANGED,
    OP_SYNC,
    OP_SYNC_ABORT,
    OP_SYNC_RESULT,
    ControlReply,
    ControlRequest,
)
from daybook.model.pins import Pin
from daybook.model.rollout import Rollout
from daybook.model.sync import RUNNING, Sync
from daybook.net.endpoints import (
    endpoints_path,
    local_socket_path,
    master_endpoint_for,
    master_endpoints,
    read_endpoints,
)
from daybook.net.keys import OPERATOR_KEY, keys_dir, load_or_create_keypair
from daybook.net.transport import ClientCredentials, secure_client, trusted_master_key
from daybook.wire import decode_as

# How long the master may take to answer a request that does not wait for minions.
ANSWER_TIMEOUT_S = 5.0
# Between two asks while no master answers as the leader (an election takes about that).
RETRY_PAUSE_S = 0.2
# How long `daybook status` waits for each master's answer before showing it unreachable.
STATUS_TIMEOUT_S = 2.0
# One long poll waits at most this long, so a restarted master is noticed and asked again.
WAIT_CHUNK_S = 5.0
# How long past a sync's deadline an operator waits for the master to close it.
CLOSE_GRACE_S = 2.0


class MasterUnreachable(FleetError):
    """No answer from the master within the time allowed."""


class MasterNotRunning(FleetError):
    """The master of this data dir left its local socket behind: it is not running."""


def local_endpoint(settings: Settings, *, others_may_answer: bool = False) -> str | None:
    """The master's local socket, if a master runs on this data dir and we may enter it.

    A socket file nobody listens on is a master killed (SIGKILL) on this data dir:
    MasterNotRunning at once, rather than a wait for an answer that cannot come; or None
    with `others_may_answer` (other masters are configured: they are asked instead).
    """
    path = local_socket_path(settings.data_dir)
    try:
        if not path.is_socket():
            return None
        listening = someone_listens(path)
    except OSError:  # the run dir belongs to another user: not our master
        return None
    if listening:
        return f"ipc://{path}"
    if others_may_answer:
        return None
    raise MasterNotRunning(
        f"the master is not running: nobody listens on its local socket {path} "
        "(it was left by a master that did not stop cleanly)"
    )


def someone_listens(path: Path) -> bool:
    """Whether a process we may talk to listens on the Unix socket at `path`. A master
    killed (SIGKILL) leaves its socket file behind, and ZeroMQ would wait on it for an
    answer that never comes; the kernel refuses a connection to it at once (ECONNREFUSED).
    ZeroMQ's ipc:// is a stream socket: the probe connects without blocking and closes at
    once; a busy master's full backlog (EAGAIN) still counts as listening."""
    with stream_socket(AF_UNIX, SOCK_STREAM) as probe:
        probe.setblocking(False)
        error = probe.connect_ex(str(path))
    return error in (0, errno.EAGAIN, errno.EINPROGRESS)


def operator_client(settings: Settings, timeout_s: float = ANSWER_TIMEOUT_S) -> ControlClient:
    """A client for operator commands: the local socket when there is one, else CURVE with
    this node's operator key (created on first use) to the control port of each master in
    turn (the first that answers, and the leader a standby names)."""
    local = local_endpoint(settings, others_may_answer=len(settings.masters) > 1)
    if local is not None:
        return ControlClient(local, timeout_s)

    def locate(holder: str) -> str | None:
        return master_endpoint_for(settings, holder, settings.control_port)

    return ControlClient(
        control_endpoints(settings),
        timeout_s,
        credentials=operator_credentials(settings, timeout_s),
        host=settings.hostname,
        locate=locate,
    )


def operator_credentials(settings: Settings, timeout_s: float) -> ClientCredentials | None:
    """This node's operator key (created on first use) and the masters' key, learnt from the
    first master that serves it if not yet trusted; None in the insecure opt-out."""
    if settings.insecure_transport:
        return None
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        server_key = trusted_master_key(settings, context, timeout_s=timeout_s)
    finally:
        context.term()
    keypair, _ = load_or_create_keypair(keys_dir(settings.data_dir), OPERATOR_KEY)
    return ClientCredentials(keypair, server_key)


def every_master_status(settings: Settings) -> list[tuple[str, ControlReply | None]]:
    """Each configured master's answer to `status` (None: no answer in time), by its
    address, in the configured order; a standby's answer is its own, not the leader's.
    One master on this data dir answers through its local socket, as it always did.
    MasterUnreachable when none answers."""
    addresses = [master.address for master in settings.masters] or [
        f"{settings.master}:{settings.port}"
    ]
    local = local_endpoint(settings, others_may_answer=len(addresses) > 1)
    if local is not None and len(addresses) == 1:
        endpoints: tuple[str, ...] = (local,)
        credentials = None
    else:
        endpoints = control_endpoints(settings)
        credentials = operator_credentials(settings, ANSWER_TIMEOUT_S)
    # Several masters: a short wait each, so that one gone away costs `status` little.
    timeout_s = ANSWER_TIMEOUT_S if len(endpoints) == 1 else STATUS_TIMEOUT_S
    answers: list[tuple[str, ControlReply | None]] = []
    refused: set[str] = set()
    for address, endpoint in zip(addresses, endpoints, strict=True):
        with ControlClient(
            endpoint, timeout_s, credentials=credentials, host=settings.hostname
        ) as client:
            answers.append((address, _status(client)))
            refused |= client.refused
    if all(reply is None for _, reply in answers):
        raise _unreachable(list(endpoints), timeout_s, refused=refused)
    return answers


def _status(client: ControlClient) -> ControlReply | None:
    try:
        return client.request(ControlRequest(_new_id(), OP_STATUS, host=client.host))
    except MasterUnreachable:
        return None


def control_endpoints(settings: Settings) -> tuple[str, ...]:
    """Every master's control endpoint, in the configured order."""
    if len(settings.masters) > 1 and settings.control_port:
        return master_endpoints(settings, settings.control_port)
    return (control_endpoint(settings),)


def control_endpoint(settings: Settings) -> str:
    """Where to reach the master's control socket.

    With `control_port = 0` (ephemeral ports, as in tests) the port comes from the
    `master.json` that a master running on the same data dir wrote when it started.
    """
    if settings.control_port:
        return settings.endpoint(settings.control_port)
    port = read_endpoints(settings.data_dir).ports.get("control")
    if not port:
        raise FleetError(f"{endpoints_path(settings.data_dir)} names no control port")
    return settings.endpoint(port)


class ControlClient:
    """Talks to a master's control socket. Close it (or use `with`) when done.

    Given several masters' endpoints (in the configured order), it asks the one that
    answered last, else each in turn, and follows a standby's pointer to the leader
    (`locate` turns the leader's advertised HOST:PORT into its control endpoint).
    """

    def __init__(
        self,
        endpoint: str | Sequence[str],
        timeout_s: float = ANSWER_TIMEOUT_S,
        *,
        context: zmq.Context[zmq.Socket[bytes]] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        credentials: ClientCredentials | None = None,
        host: str | None = None,
        locate: Callable[[str], str | None] = lambda _holder: None,
        keep_connections: bool = False,
    ) -> None:
        self.endpoints = (endpoint,) if isinstance(endpoint, str) else tuple(endpoint)
        if not self.endpoints:
            raise FleetError("no master to ask: the list of masters is empty")
        # The master that answered last: asked first next time.
        self.endpoint = self.endpoints[0]
        # The fleet's leader as the last answer named it (None: none named).
        self.leader: Term | None = None
        self.timeout_s = timeout_s
        # CURVE for a TCP endpoint (None: plaintext, for the local socket); and the host
        # name sent with each request, under which the master lists an unknown key.
        self._credentials = credentials
        self.host = host
        self._locate = locate
        self._owns_context = context is None
        self._context: zmq.Context[zmq.Socket[bytes]] = context or zmq.Context()
        self._monotonic = monotonic
        # With `keep_connections` (a minion's periodic hello), each master's connection is
        # kept while it answers: a request then costs a message, not a CURVE handshake,
        # which is what a fleet's hellos would otherwise cost the master's I/O thread. One
        # thread only may use such a client; `close` it on that thread.
        self._kept: dict[str, zmq.Socket[bytes]] | None = {} if keep_connections else None
        # The masters that refused the last request's connection (see _ConnectWatch).
        self._refused: set[str] = set()

    @property
    def refused(self) -> frozenset[str]:
        """The masters that refused the last request's connection: nothing listens there."""
        return frozenset(self._refused)

    def close(self) -> None:
        if self._kept is not None:
            for socket in self._kept.values():
                socket.close()
            self._kept.clear()
        if self._owns_context:
            self._context.term()

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # -- typed API ------------------------------------------------------------------------------

    def request(self, request: ControlRequest) -> ControlReply:
        """Send one request; wait its `wait_s` plus the answer timeout for the reply, from
        each master in turn until one answers (a standby's refusal is followed to the
        leader it names). MasterUnreachable when none answers."""
        if len(self.endpoints) > 1:
            return self._request_every_master(request)
        self._refused.clear()
        tried: list[str] = []
        refusal: ControlReply | None = None
        for endpoint in (self.endpoint, *(e for e in self.endpoints if e != self.endpoint)):
            if endpoint in tried:
                continue
            reply = self._ask(endpoint, request, tried)
            if reply is None:
                continue
            if reply.standby:
                refusal = reply
                holder = reply.leader.holder if reply.leader is not None else None
                leader = self._locate(holder) if holder is not None else None
                if leader is None or leader in tried:
                    continue
                reply = self._ask(leader, request, tried)
                if reply is None or reply.standby:
                    continue
            return reply
        if refusal is not None:
            return refusal  # only standbys answered: their refusal names the leader
        raise _unreachable(tried, request.wait_s + self.timeout_s, refused=self._refused)

    def _request_every_master(self, request: ControlRequest) -> ControlReply:
        """Several masters: ask them all at once and take the leader's answer, so a dead
        master costs nothing (asked in turn, it would cost a whole answer timeout first).
        Only the leader acts on a request; standbys refuse it at once, naming the leader,
        which is asked too if it is not on the list. Until the leader answers, or every
        master has, or the time is up, the others are waited for."""
        patience_s = request.wait_s + self.timeout_s
        sockets: dict[zmq.Socket[bytes], str] = {}
        poller = zmq.Poller()
        refusal: ControlReply | None = None
        try:
            for endpoint in self.endpoints:
                socket = self._sent_to(endpoint, request)
                sockets[socket] = endpoint
                poller.register(socket, zmq.POLLIN)
            deadline = self._monotonic() + patience_s
            while sockets and (remaining_s := deadline - self._monotonic()) > 0:
                for socket, _event in poller.poll(max(1, int(remaining_s * 1000))):
                    reply = self._reply_from(socket, request)
                    if reply is None:
                        continue
                    self.endpoint = sockets.pop(socket)
                    poller.unregister(socket)
                    self._done_with(self.endpoint, socket, answered=True)
                    if reply.leader is not None:
                        self.leader = reply.leader
                    if not reply.standby:
                        return reply
                    refusal = reply
        finally:
            for socket, endpoint in sockets.items():
                self._done_with(endpoint, socket, answered=False)
        return self._after_refusal(request, refusal, patience_s)

    def _after_refusal(
        self, request: ControlRequest, refusal: ControlReply | None, patience_s: float
    ) -> ControlReply:
        if refusal is None:
            raise _unreachable(list(self.endpoints), patience_s)
        holder = refusal.leader.holder if refusal.leader is not None else None
        leader = self._locate(holder) if holder is not None else None
        if leader is not None and leader not in self.endpoints:
            reply = self._ask(leader, request, [])
            if reply is not None and not reply.standby:
                return reply
        return refusal  # only standbys answered: their refusal names the leader

    def _sent_to(self, endpoint: str, request: ControlRequest) -> zmq.Socket[bytes]:
        socket = self._connection(endpoint)
        try:
            socket.send_multipart(wire.encode(request))
        except BaseException:
            self._done_with(endpoint, socket, answered=False)
            raise
        return socket

    def _connection(self, endpoint: str) -> zmq.Socket[bytes]:
        """A kept connection to `endpoint`, else a new one."""
        if self._kept is not None and (kept := self._kept.get(endpoint)) is not None:
            return kept
        socket = self._context.socket(zmq.DEALER)
        socket.setsockopt(zmq.LINGER, 0)
        socket.setsockopt(zmq.MAXMSGSIZE, MAX_FRAME_BYTES)
        secure_client(socket, self._credentials)
        socket.connect(endpoint)
        if self._kept is not None:
            self._kept[endpoint] = socket
        return socket

    def _done_with(self, endpoint: str, socket: zmq.Socket[bytes], *, answered: bool) -> None:
        """Close a request's connection, unless it is kept and its master answered: one
        that did not is closed, so the next request starts on a fresh connection."""
        if self._kept is not None and answered:
            return
        if self._kept is not None:
            self._kept.pop(endpoint, None)
        socket.close()

    def _reply_from(
        self, socket: zmq.Socket[bytes], request: ControlRequest
    ) -> ControlReply | None:
        try:
            reply = decode_as(ControlReply, socket.recv_multipart(), max_bytes=MAX_FRAME_BYTES)
        except WireError:
            return None  # not an answer we can read; keep waiting for one
        return reply if reply.request_id == request.request_id else None

    def _ask(self, endpoint: str, request: ControlRequest, tried: list[str]) -> ControlReply | None:
        """One master's reply (noted as the one to ask first), or None if it gives none."""
        tried.append(endpoint)
        try:
            reply = self._request_at(endpoint, request)
        except MasterUnreachable:
            return None
        self.endpoint = endpoint
        if reply.leader is not None:
            self.leader = reply.leader
        return reply

    def _request_at(self, endpoint: str, request: ControlRequest) -> ControlReply:
        patience_s = request.wait_s + self.timeout_s
        socket = self._sent_to(endpoint, request)
        refusals = _ConnectWatch(socket) if self._kept is None else None
        answered = False
        try:
            deadline = self._monotonic() + patience_s
            while (remaining_s := deadline - self._monotonic()) > 0:
                timeout_ms = max(1, int(remaining_s * 1000))
                if refusals is not None:
                    if not refusals.wait(timeout_ms):
                        break
                    if refusals.refused:
                        self._refused.add(endpoint)
                        raise MasterUnreachable(f"{endpoint} refused the connection")
                    if not socket.poll(0, zmq.POLLIN):
                        continue
                elif not socket.poll(timeout_ms, zmq.POLLIN):
                    break
                try:
                    reply = decode_as(
                        ControlReply, socket.recv_multipart(), max_bytes=MAX_FRAME_BYTES
                    )
                except WireError:
                    continue  # not an answer we can read; keep waiting for one
                if reply.request_id == request.request_id:
                    answered = True
                    return reply
        finally:
            if refusals is not None:
                refusals.close()
            self._done_with(endpoint, socket, answered=answered)
        raise MasterUnreachable(f"no answer from {endpoint} within {patience_s:g} s")

    def _answer(self, request: ControlRequest) -> ControlReply:
        reply = self.request(request)
        if reply.error is not None:
            kind = InputError if reply.invalid else FleetError
            raise kind(f"the master refused the request: {reply.error}")
        return reply

    def start_sync(self, target: str | None, wait_s: float = 0.0, deadline_s: float = 0.0) -> Sync:
        """Start a sync that stops waiting for answers after `deadline_s` (0: the master's
        default); answer once it ends, or after `wait_s` at most."""
        reply = self._answer(
            ControlRequest(
                _new_id(),
                OP_SYNC,
                target=target,
                wait_s=min(wait_s, WAIT_CHUNK_S),
                host=self.host,
                deadline_s=deadline_s,
            )
        )
        return _expect_sync(reply, self.endpoint)

    def sync_result(self, sync_id: str, wait_s: float = 0.0) -> Sync:
        reply = self._answer(
            ControlRequest(
                _new_id(), OP_SYNC_RESULT, sync_id=sync_id, wait_s=wait_s, host=self.host
            )
        )
        return _expect_sync(reply, self.endpoint)

    def hello(self, host: str, role: str) -> Key:
        """Tell the master who this key belongs to; the answer is the key's standing."""
        reply = self._answer(ControlRequest(_new_id(), OP_HELLO, host=host, role=role))
        if reply.key is None:
            raise FleetError(f"the master at {self.endpoint} sent no key standing")
        return reply.key

    def downloads(self, service: str, versions: tuple[str, ...] = ()) -> tuple[Download, ...]:
        """A minion's request: every version of `service` the master lists, with a signed
        URL for each of `versions`."""
        request = ControlRequest(
            _new_id(), OP_DOWNLOADS, host=self.host, service=service, versions=versions
        )
        return self._answer(request).downloads

    def keys(self) -> KeyListing:
        reply = self._answer(ControlRequest(_new_id(), OP_KEYS_LIST))
        if reply.keys is None:
            raise FleetError(f"the master at {self.endpoint} sent no keys")
        return reply.keys

    def change_key(self, op: str, selector: str) -> Key:
        """`keys.accept`, `keys.reject` or `keys.delete` the key `selector` names."""
        reply = self._answer(ControlRequest(_new_id(), op, selector=selector))
        if reply.key is None:
            raise FleetError(f"the master at {self.endpoint} sent no key")
        return reply.key

    def run_sync(self, target: str | None, *, wait: bool, timeout_s: float) -> Sync:
        """Start a sync that may take `timeout_s`; with `wait`, return once it has ended:
        every expected host answered, or the master closed it at that deadline (or sooner,
        every host it still waited for being down)."""
        deadline = self._monotonic() + timeout_s
        summary = self.start_sync(target, wait_s=timeout_s if wait else 0.0, deadline_s=timeout_s)
        started_on, leader = self.endpoint, self.leader
        while wait and summary.state == RUNNING:
            # Past our deadline, the master's is just passing too: give it a moment to close
            # the sync, so the answer says how it ended rather than "running".
            remaining_s = max(deadline - self._monotonic(), 0.0) + CLOSE_GRACE_S
            if self._monotonic() >= deadline + CLOSE_GRACE_S:
                break
            try:
                summary = self._followed_sync(
                    summary.sync_id, min(remaining_s, WAIT_CHUNK_S), started_on, leader
                )
            except MasterUnreachable:
                # The master may be restarting, or a standby taking over; the sync is kept.
                # Ask again until the end, not in a tight loop.
                if self._monotonic() >= deadline:
                    raise
                time.sleep(min(RETRY_PAUSE_S, max(0.0, deadline - self._monotonic())))
        return summary

    def _followed_sync(
        self, sync_id: str, wait_s: float, started_on: str, leader: Term | None
    ) -> Sync:
        """The sync's state, from whichever master answers; a failover to a leader that does
        not know the sync is one clear error, not a wait that never ends."""
        request = ControlRequest(
            _new_id(), OP_SYNC_RESULT, sync_id=sync_id, wait_s=wait_s, host=self.host
        )
        reply = self.request(request)
        if reply.standby:
            # Only standbys answer: no leader yet, or theirs is the one gone. Ask again.
            raise MasterUnreachable(f"no leader answers: {reply.error}")
        if reply.error is not None and self.endpoint != started_on:
            old = leader.holder if leader is not None else started_on
            now = (
                f"{self.leader.holder} leads now (term {self.leader.number})"
                if self.leader is not None
                else f"{self.endpoint} answers now"
            )
            raise FleetError(
                f"the leader {old} went away while sync {sync_id} ran; {now}: run the sync again"
            )
        if reply.error is not None:
            kind = InputError if reply.invalid else FleetError
            raise kind(f"the master refused the request: {reply.error}")
        return _expect_sync(reply, self.endpoint)

    def start_rollout(
        self,
        target: str | None,
        *,
        batch: str,
        max_failures: int = 0,
        batch_wait_s: float = 0.0,
        deadline_s: float = 0.0,
        wait_s: float = 0.0,
        pin: Pin | None = None,
    ) -> tuple[Sync, Rollout]:
        """Start a rolling sync whose every batch waits `deadline_s` for its hosts; answer
        once it ends, or after `wait_s` at most. Returns its summary and the rollout."""
        request = ControlRequest(
            _new_id(),
            OP_SYNC,
            target=target,
            wait_s=min(wait_s, WAIT_CHUNK_S),
            host=self.host,
            deadline_s=deadline_s,
            batch=batch,
            max_failures=max_failures,
            batch_wait_s=batch_wait_s,
            pin=pin,
        )
        return _expect_rollout(self._answer(request), self.endpoint)

    def rollout_result(self, rollout_id: str, wait_s: float = 0.0) -> tuple[Sync, Rollout]:
        request = ControlRequest(
            _new_id(), OP_SYNC_RESULT, sync_id=rollout_id, wait_s=wait_s, host=self.host
        )
        return _expect_rollout(self._answer(request), self.endpoint)

    def abort_rollout(self, rollout_id: str) -> tuple[Sync, Rollout]:
        """Stop a rolling sync: the master starts no further batch of it."""
        request = ControlRequest(_new_id(), OP_SYNC_ABORT, sync_id=rollout_id, host=self.host)
        return _expect_rollout(self._answer(request), self.endpoint)

    def run_rollout(
        self,
        target: str | None,
        *,
        batch: str,
        max_failures: int,
        batch_wait_s: float,
        wait: bool,
        timeout_s: float,
        pin: Pin | None = None,
    ) -> tuple[Sync, Rollout]:
        """Start a rolling sync, each batch of which may take `timeout_s`; with `wait`,
        return once it has completed or halted, which takes at most a batch's timeout and
        wait per batch."""
        started = self._monotonic()
        summary, rollout = self.start_rollout(
            target,
            batch=batch,
            max_failures=max_failures,
            batch_wait_s=batch_wait_s,
            deadline_s=timeout_s,
            wait_s=timeout_s if wait else 0.0,
            pin=pin,
        )
        deadline = started + len(rollout.batches) * (timeout_s + batch_wait_s) + CLOSE_GRACE_S
        while wait and not rollout.ended and self._monotonic() < deadline:
            remaining_s = deadline - self._monotonic()
            try:
                summary, rollout = self.rollout_result(
                    rollout.rollout_id, min(remaining_s, WAIT_CHUNK_S)
                )
            except MasterUnreachable:
                if self._monotonic() >= deadline:
                    raise
        return summary, rollout

    def store_changed(self) -> None:
        """Tell the master the store holds something new, so it lists the store now."""
        self._answer(ControlRequest(_new_id(), OP_STORE_CHANGED, host=self.host))

    def fleet_status(self) -> FleetStatus:
        reply = self._answer(ControlRequest(_new_id(), OP_STATUS, host=self.host))
        if reply.status is None:
            raise FleetError(f"the master at {self.endpoint} sent no status")
        return reply.status


class _ConnectWatch:
    """Whether a request's connection was refused before it was ever made: the master's
    host answered that nothing listens on the port (a master stopped, or not started).
    libzmq would retry in silence, and the operator wait out the whole answer timeout,
    more with `--wait`, for an answer that cannot come. A host that does not answer at all
    gives no such sign: that costs the timeout, as before."""

    _EVENTS = zmq.EVENT_CONNECTED | zmq.EVENT_CONNECT_RETRIED

    def __init__(self, socket: zmq.Socket[bytes]) -> None:
        self._socket = socket
        self._monitor: zmq.Socket[bytes] | None = socket.get_monitor_socket(self._EVENTS)
        self._poller = zmq.Poller()
        self._poller.register(socket, zmq.POLLIN)
        self._poller.register(self._monitor, zmq.POLLIN)
        self.refused = False

    def wait(self, timeout_ms: int) -> bool:
        """Wait for a reply or a connection event; False when the time ran out."""
        ready = dict(self._poller.poll(timeout_ms))
        if not ready:
            return False
        if self._monitor is not None and self._monitor in ready:
            from zmq.utils.monitor import recv_monitor_message

            event = recv_monitor_message(self._monitor)["event"]
            if event == zmq.EVENT_CONNECTED:
                self._stop_watching()  # connected: only the answer counts from now on
            elif event == zmq.EVENT_CONNECT_RETRIED:
                self.refused = True
        return True

    def _stop_watching(self) -> None:
        if self._monitor is not None:
            self._poller.unregister(self._monitor)
            self._socket.disable_monitor()
            self._monitor.close()
            self._monitor = None

    def close(self) -> None:
        self._stop_watching()


def _unreachable(
    tried: list[str], patience_s: float, *, refused: Collection[str] = ()
) -> MasterUnreachable:
    if len(tried) == 1:
        why = (
            "connection refused (is it running?)"
            if tried[0] in refused
            else f"no answer within {patience_s:g} s"
        )
        return MasterUnreachable(f"cannot reach the master at {tried[0]}: {why}")
    return MasterUnreachable(
        f"cannot reach any master: no answer from {', '.join(tried)} within {patience_s:g} s each"
    )


def _new_id() -> str:
    # 128 random bits, as a uuid4 would carry, without importing uuid (and platform) into
    # every operator command.
    return os.urandom(16).hex()


def _expect_rollout(reply: ControlReply, endpoint: str) -> tuple[Sync, Rollout]:
    if reply.rollout is None or reply.sync is None:
        raise FleetError(f"the master at {endpoint} sent no rolling sync")
    return reply.sync, reply.rollout


def _expect_sync(reply: ControlReply, endpoint: str) -> Sync:
    if reply.sync is None:
        raise FleetError(f"the master at {endpoint} sent no sync summary")
    return reply.sync
