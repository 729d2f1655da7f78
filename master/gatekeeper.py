"""The gatekeeper: the master's ZAP handler and its key port, on one thread of their own.

ZeroMQ asks the ZAP handler (RFC 27) about every handshake on a socket with a ZAP domain,
before the peer can send or receive anything; the answer's User-Id then travels with each
message from that peer. The key port hands out the master's public key, and nothing else,
to clients meeting the master for the first time.

Order matters: the ZAP socket is bound before any CURVE socket and closed after all of them,
so that every handshake gets an answer; the sockets it serves refuse a handshake while no
ZAP handler is bound (ZAP_ENFORCE_DOMAIN: without it libzmq would let them all through).

libzmq keeps the pipe pair it opened from a connection to the ZAP handler for the
connection's whole life, though only the handshake uses it: two message queues of 16 KB
(256 messages of 64 bytes, a compile-time constant) and their pipes, for each of a
minion's two connections. Once the handshakes it answered are over, the gatekeeper opens
its socket anew (ZapPort.renew), which ends every such pair and leaves the connections be:
with 1,000 swarm minions 133-139 MB instead of 152-156, with 8,900 0.91 GB instead of
1.07. A handshake caught in that instant is refused or times out (SERVER_HANDSHAKE_MS),
and its peer connects again.

That a renewal leaves a handshaken connection be rests on libzmq (4.3.5) marking the
session's end of its ZAP pipe "no delay" (session_base.cpp, zap_connect): the session
drops the pipe as soon as the handler's end closes, and never asks its finished
handshake for another ZAP reply.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import threading
import time
from collections.abc import Callable
from typing import NamedTuple

import zmq
import zmq.utils.z85

from daybook.mailbox import Mailbox
from daybook.model.keys import MINION, REJECTED
from daybook.net.transport import (
    CURVE_USER_PREFIX,
    DOMAIN_LOCAL,
    DOMAIN_PUBLISH,
    DOMAIN_RESULTS,
    KEY_REPLY,
    KEY_REQUEST,
    LOCAL_USER,
    ZAP_ENDPOINT,
)
from master.keyring import Admission, KeyRing

log = logging.getLogger(__name__)

# Requests handled per socket between two looks at the stop flag and the key ring's file.
BATCH = 256
# The key ring's notes (a new pending key, a time seen) are saved this soon after the first
# of them, so a burst of handshakes writes the file once.
FLUSH_INTERVAL_S = 0.5
# The ZAP socket is opened anew once no handshake was let in for this long...
RENEW_WHEN_QUIET_S = 1.0
# ...or, while they keep coming, this long after the first it let in.
RENEW_AT_LEAST_EVERY_S = 30.0
# On Linux, libzmq appends the peer's credentials to an ipc:// address: `...:uid:gid:pid`.
_PEER_CREDENTIALS_RE = re.compile(r":(\d+):(\d+):(\d+)$")

# Why a handshake was refused: a key pending or rejected (held off: it will try again), an
# operator key on a minion's socket, too many keys pending to record another, a peer that
# is not CURVE with one well-formed key (or, on the local socket, not this user), a domain
# no socket has, no key ring at all, or a fault in the handler itself.
REFUSAL_REASONS = (
    "pending",
    "rejected",
    "not_a_minion",
    "too_many_pending",
    "mechanism",
    "other_user",
    "domain",
    "no_keyring",
    "error",
)


class Verdict(NamedTuple):
    """The answer to one handshake, the User-Id its peer's messages will carry, and why
    it was refused (None when it was not)."""

    admission: Admission
    user_id: str
    refusal: str | None = None


def _refused(reason: str) -> Verdict:
    return Verdict(Admission.DENY, "", reason)


class ZapPort:
    """The ZAP handler's socket, bound at ZAP_ENDPOINT, and its renewal (see the module's
    docstring). Used by one thread at a time: bound before the sockets it serves, then
    the gatekeeper's, closed once the gatekeeper has stopped."""

    def __init__(self, context: zmq.Context[zmq.Socket[bytes]]) -> None:
        self._context = context
        self.socket = self._open()

    def _open(self) -> zmq.Socket[bytes]:
        socket = self._context.socket(zmq.ROUTER)
        socket.setsockopt(zmq.LINGER, 0)
        try:
            socket.bind(ZAP_ENDPOINT)
        except zmq.ZMQError:
            socket.close()
            raise
        return socket

    def renew(self) -> zmq.Socket[bytes]:
        """Close the socket, which ends the pipes of every connection it answered, and bind
        a new one. Unbinding frees the endpoint's name at once; closing alone would free
        it later, on libzmq's reaper thread."""
        self.socket.unbind(ZAP_ENDPOINT)
        self.socket.close()
        self.socket = self._open()
        return self.socket

    def close(self) -> None:
        self.socket.close()


def renewal_due(let_in_since: float | None, last_let_in: float) -> float | None:
    """When the ZAP socket should be opened anew: once the handshakes let in since
    `let_in_since` have been quiet a while, or have gone on long enough; None when none
    was let in since the last renewal."""
    if let_in_since is None:
        return None
    return min(last_let_in + RENEW_WHEN_QUIET_S, let_in_since + RENEW_AT_LEAST_EVERY_S)


class Gatekeeper:
    def __init__(
        self,
        zap: ZapPort,
        key_socket: zmq.Socket[bytes] | None,
        keyring: KeyRing | None,
        public_key: str | None,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        on_refusal: Callable[[str], None] = lambda _reason: None,
        saves_keyring: bool = True,
    ) -> None:
        self._zap = zap
        self._key_socket = key_socket
        self._keyring = keyring
        self._key_reply = [KEY_REPLY, public_key.encode()] if public_key else None
        self._monotonic = monotonic
        # Told each refused handshake's reason, on this thread (the metrics count them).
        self._on_refusal = on_refusal
        self._stop = threading.Event()
        # Since when handshakes were let in without a renewal of the ZAP socket, and when
        # the latest was (monotonic).
        self._let_in_since: float | None = None
        self._last_let_in = 0.0
        # Wakes the thread for a stop or a key ring change; otherwise it sleeps until a
        # handshake or a key request arrives, so an idle master costs nothing here.
        self._wakes: Mailbox[None] = Mailbox()
        # A key ring in a shared store is written by a thread of its own (a write may
        # wait on the network, and a handshake must not); one in a local file, from here.
        self._saves_keyring = keyring is not None and saves_keyring
        if keyring is not None and self._saves_keyring:
            keyring.when_dirty(lambda: self._wakes.post(None))
        self.counters: dict[str, int] = {
            "allowed": 0,
            "held": 0,
            "denied": 0,
            "key_requests": 0,
            "malformed": 0,
            "renewals": 0,
        }

    def stop(self) -> None:
        self._stop.set()
        self._wakes.post(None)

    def run(self) -> None:
        poller = zmq.Poller()
        poller.register(self._zap.socket, zmq.POLLIN)
        if self._key_socket is not None:
            poller.register(self._key_socket, zmq.POLLIN)
        poller.register(self._wakes.fileno(), zmq.POLLIN)
        flush_due: float | None = None
        try:
            while not self._stop.is_set():
                renew_due = renewal_due(self._let_in_since, self._last_let_in)
                ready = dict(poller.poll(self._timeout_ms(flush_due, renew_due)))
                if self._wakes.fileno() in ready:
                    self._wakes.drain()
                if self._zap.socket in ready:
                    self._answer_zap()
                if self._key_socket is not None and self._key_socket in ready:
                    self._serve_key(self._key_socket)
                if self._keyring is None or not self._saves_keyring or not self._keyring.dirty:
                    flush_due = None
                elif flush_due is None:
                    flush_due = self._monotonic() + FLUSH_INTERVAL_S
                elif self._monotonic() >= flush_due:
                    flush_due = None
                    self._keyring.save_if_dirty()
                self._renew_if_due(poller)
        except Exception:
            log.critical("the gatekeeper failed: no handshake is answered from now on")
            raise
        finally:
            if self._keyring is not None and self._saves_keyring:
                self._keyring.when_dirty(lambda: None)
            self._wakes.close()

    def _timeout_ms(self, *dues: float | None) -> int | None:
        """Block until a request or a wake-up, or until the key ring's file or the ZAP
        socket's renewal is due."""
        due = min((at for at in dues if at is not None), default=None)
        if due is None:
            return None
        return max(0, math.ceil((due - self._monotonic()) * 1000))

    def _renew_if_due(self, poller: zmq.Poller) -> None:
        """Open the ZAP socket anew once due, unless a request is waiting on it (its
        handshake would stall until SERVER_HANDSHAKE_MS, and its peer connect again)."""
        due = renewal_due(self._let_in_since, self._last_let_in)
        if due is None or self._monotonic() < due or self._zap.socket.poll(0):
            return
        poller.unregister(self._zap.socket)
        poller.register(self._zap.renew(), zmq.POLLIN)
        self._let_in_since = None
        self.counters["renewals"] += 1

    # -- ZAP ------------------------------------------------------------------------------------

    def _answer_zap(self) -> None:
        for _ in range(BATCH):
            try:
                frames = self._zap.socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                split = frames.index(b"")
            except ValueError:
                self.counters["malformed"] += 1
                continue
            envelope, body = frames[: split + 1], frames[split + 1 :]
            if len(body) < 6:
                self.counters["malformed"] += 1
                continue
            version, request_id, domain, address, _identity, mechanism, *credentials = body
            try:
                verdict = self.decide(
                    domain.decode(errors="replace"),
                    address.decode(errors="replace"),
                    mechanism.decode(errors="replace"),
                    credentials,
                )
            except Exception:  # a bug here must hold the peer off, never let it in
                log.exception("the ZAP handler failed; denying the handshake")
                verdict = _refused("error")
            admission = verdict.admission
            self.counters[_COUNTER[admission]] += 1
            if admission is Admission.ALLOW:
                # A refused connection ends, and its pipes with it: only these stay.
                self._last_let_in = self._monotonic()
                if self._let_in_since is None:
                    self._let_in_since = self._last_let_in
            if verdict.refusal is not None:
                self._on_refusal(verdict.refusal)
            reply = [
                version,
                request_id,
                admission.value.encode(),
                b"OK" if admission is Admission.ALLOW else b"not accepted",
                verdict.user_id.encode() if admission is Admission.ALLOW else b"",
                b"",
            ]
            self._zap.socket.send_multipart([*envelope, *reply])

    def decide(
        self, domain: str, address: str, mechanism: str, credentials: list[bytes]
    ) -> Verdict:
        """The answer to one handshake, the User-Id its peer's messages will carry, and
        why it was refused if it was."""
        if domain == DOMAIN_LOCAL:
            if mechanism != "NULL":
                return _refused("mechanism")
            if not _same_user(address):
                return _refused("other_user")
            return Verdict(Admission.ALLOW, LOCAL_USER)
        if mechanism != "CURVE" or len(credentials) != 1 or len(credentials[0]) != 32:
            return _refused("mechanism")
        if self._keyring is None:
            return _refused("no_keyring")
        public_key = zmq.utils.z85.encode(credentials[0]).decode()
        admission = self._keyring.admit(domain, public_key, address)
        user_id = CURVE_USER_PREFIX + public_key
        if admission is Admission.ALLOW:
            return Verdict(admission, user_id)
        return Verdict(admission, user_id, self._why_not(self._keyring, domain, public_key))

    @staticmethod
    def _why_not(keyring: KeyRing, domain: str, public_key: str) -> str:
        """Why the key ring did not admit `public_key` to `domain`."""
        if domain not in (DOMAIN_PUBLISH, DOMAIN_RESULTS):
            return "domain"
        entry = keyring.get(public_key)
        if entry is None:
            return "too_many_pending"
        if entry.role != MINION:
            return "not_a_minion"
        # Otherwise held off until accepted (if it was accepted since, it gets in next time).
        return "rejected" if entry.state == REJECTED else "pending"

    # -- the key port ---------------------------------------------------------------------------

    def _serve_key(self, socket: zmq.Socket[bytes]) -> None:
        for _ in range(BATCH):
            try:
                frames = socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            if len(frames) != 2 or frames[1] != KEY_REQUEST or self._key_reply is None:
                self.counters["malformed"] += 1
                continue
            self.counters["key_requests"] += 1
            # An asker that is not reading loses the answer; it will ask again.
            with contextlib.suppress(zmq.Again):
                socket.send_multipart([frames[0], *self._key_reply], zmq.NOBLOCK)


_COUNTER = {Admission.ALLOW: "allowed", Admission.HOLD: "held", Admission.DENY: "denied"}


def _same_user(address: str) -> bool:
    """On the local socket, only this user (or root) gets in. The socket's owner-only
    directory already ensures it; the peer's credentials, where libzmq gives them, check it
    again."""
    found = _PEER_CREDENTIALS_RE.search(address)
    if found is None:
        return True
    uid = int(found.group(1))
    return uid in (os.geteuid(), 0)
