"""Transport security: CURVE options for every socket, who sent a frame, and how a minion or
operator learns the master's public key.

Every TCP socket between master, minions and operators is CURVE: encrypted, the master
proven by its key, each client by its own. The master's ZAP handler (master.gatekeeper)
decides per connection and names the peer in each message's `User-Id`: `curve:<key>` for a
CURVE client, `local` for an operator on the master's owner-only local socket, nothing for
anyone else.

A client must know the master's key before it connects. It is, in order: the configured
`master_key`; the master's own certificate when the client shares the master's data dir;
the key pinned on an earlier contact; else the key the master's key port serves, which is
pinned from then on (trust on first use, as ssh does with host keys). A later change of the
master's key is refused, never followed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import zmq

from daybook.config import Settings
from daybook.errors import ConfigError, FleetError
from daybook.model.keys import fingerprint, is_public_key
from daybook.net.endpoints import master_endpoints
from daybook.net.keys import (
    MASTER_KEY,
    PINNED_MASTER_KEY,
    KeyPair,
    keys_dir,
    pin_master_key,
    read_public_key,
)

log = logging.getLogger(__name__)

# libzmq asks the ZAP handler bound here about every handshake on a socket with a domain.
# While none is bound, with ZAP_ENFORCE_DOMAIN (set on every such socket) it lets none
# through: CURVE is refused at once, NULL dropped after the handshake timeout. Left unset,
# libzmq would let every handshake through instead.
ZAP_ENDPOINT = "inproc://zeromq.zap.01"
DOMAIN_PUBLISH = "daybook.publish"
DOMAIN_RESULTS = "daybook.results"
DOMAIN_CONTROL = "daybook.control"
DOMAIN_LOCAL = "daybook.local"
LOCAL_USER = "local"
CURVE_USER_PREFIX = "curve:"

# A server drops a handshake that has not finished in this long. A peer whose key is not
# accepted yet is held (ZAP status 300) and dropped after this, then reconnects: so an
# accepted key gets in within about this long, and a pending one costs one try per period.
SERVER_HANDSHAKE_MS = 2000
CLIENT_HANDSHAKE_MS = 5000

# The key port speaks two raw frames, no msgpack: a request, and the key in Z85.
KEY_REQUEST = b"daybook.key?"
KEY_REPLY = b"daybook.key"
MAX_KEY_FRAME_BYTES = 512
KEY_FETCH_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class ClientCredentials:
    """What a CURVE client presents (its key pair) and whom it accepts (the master's key)."""

    keypair: KeyPair
    server_key: str


def secure_client(socket: zmq.Socket[bytes], credentials: ClientCredentials | None) -> None:
    """Make `socket` a CURVE client; None leaves it plaintext (the insecure opt-out)."""
    socket.setsockopt(zmq.HANDSHAKE_IVL, CLIENT_HANDSHAKE_MS)
    if credentials is None:
        return
    socket.setsockopt(zmq.CURVE_SERVERKEY, credentials.server_key.encode())
    socket.setsockopt(zmq.CURVE_PUBLICKEY, credentials.keypair.public.encode())
    socket.setsockopt(zmq.CURVE_SECRETKEY, credentials.keypair.secret.encode())


def secure_server(socket: zmq.Socket[bytes], keypair: KeyPair | None, domain: str) -> None:
    """Make the next `bind` of `socket` a CURVE server whose peers ZAP checks in `domain`.

    With no key pair (the insecure opt-out) the socket stays plaintext and unnamed: its
    peers carry no User-Id, so none of them is ever taken for an operator.
    """
    socket.setsockopt(zmq.HANDSHAKE_IVL, SERVER_HANDSHAKE_MS)
    if keypair is None:
        return
    socket.setsockopt(zmq.CURVE_SERVER, 1)
    socket.setsockopt(zmq.CURVE_PUBLICKEY, keypair.public.encode())
    socket.setsockopt(zmq.CURVE_SECRETKEY, keypair.secret.encode())
    socket.setsockopt_string(zmq.ZAP_DOMAIN, domain)
    socket.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)


def local_server(socket: zmq.Socket[bytes]) -> None:
    """Make the next `bind` of `socket` (an ipc:// one) plaintext, its peers named `local`.

    ZeroMQ takes security options when an endpoint is bound, so one ROUTER can serve CURVE
    on TCP and this on ipc://; the socket file's owner-only directory is the authentication.
    """
    socket.setsockopt(zmq.CURVE_SERVER, 0)
    socket.setsockopt_string(zmq.ZAP_DOMAIN, DOMAIN_LOCAL)
    socket.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)


@dataclass(frozen=True)
class Peer:
    """Who sent a message, as the transport vouches: `user_id` is set by the ZAP handler."""

    user_id: str
    address: str

    @property
    def local(self) -> bool:
        return self.user_id == LOCAL_USER

    @property
    def public_key(self) -> str | None:
        if self.user_id.startswith(CURVE_USER_PREFIX):
            key = self.user_id[len(CURVE_USER_PREFIX) :]
            return key if is_public_key(key) else None
        return None


ANONYMOUS = Peer("", "")


def peer_of(frame: zmq.Frame) -> Peer:
    return Peer(user_id_of(frame), _property(frame, "Peer-Address"))


def user_id_of(frame: zmq.Frame) -> str:
    """The User-Id alone, for a check made on every message (the address is for logs)."""
    return _property(frame, "User-Id")


def _property(frame: zmq.Frame, name: str) -> str:
    try:
        value = frame.get(name)
    except zmq.ZMQError:  # not set: no ZAP handler named this peer
        return ""
    return value if isinstance(value, str) else ""


# -- learning the master's key --------------------------------------------------------------------


def fetch_master_key(
    context: zmq.Context[zmq.Socket[bytes]],
    endpoint: str,
    timeout_s: float = KEY_FETCH_TIMEOUT_S,
) -> str:
    """Ask the master's key port for its public key; FleetError without a valid answer.

    This is the one plaintext exchange: it carries a public key, and the answer is only
    trusted on first contact (and pinned), or compared with a key already trusted.
    """
    socket = context.socket(zmq.DEALER)
    try:
        socket.setsockopt(zmq.LINGER, 0)
        socket.setsockopt(zmq.MAXMSGSIZE, MAX_KEY_FRAME_BYTES)
        socket.connect(endpoint)
        socket.send(KEY_REQUEST)
        if socket.poll(max(1, int(timeout_s * 1000)), zmq.POLLIN):
            frames = socket.recv_multipart()
            if len(frames) == 2 and frames[0] == KEY_REPLY:
                key = frames[1].decode("ascii", errors="replace")
                if is_public_key(key):
                    return key
            raise FleetError(f"the key port at {endpoint} sent something other than a key")
    finally:
        socket.close()
    raise FleetError(f"no answer from the master's key port at {endpoint} within {timeout_s:g} s")


def fetch_first_master_key(
    context: zmq.Context[zmq.Socket[bytes]],
    endpoints: Sequence[str],
    timeout_s: float = KEY_FETCH_TIMEOUT_S,
) -> tuple[str, str]:
    """The key from the first of `endpoints` that serves one, and that endpoint."""
    failures: list[str] = []
    for endpoint in endpoints:
        try:
            return fetch_master_key(context, endpoint, timeout_s), endpoint
        except FleetError as exc:
            failures.append(str(exc))
    raise FleetError("; ".join(failures))


def known_master_key(settings: Settings) -> tuple[str, str] | None:
    """The master key this node already trusts, with where it comes from; None if none."""
    if settings.master_key:
        return settings.master_key, "the master_key setting"
    directory = keys_dir(settings.data_dir)
    for path in (directory / f"{MASTER_KEY}.key", directory / PINNED_MASTER_KEY):
        key = read_public_key(path)
        if key is not None:
            return key, str(path)
    return None


def trusted_master_key(
    settings: Settings,
    context: zmq.Context[zmq.Socket[bytes]],
    *,
    wait: Callable[[float], bool] | None = None,
    timeout_s: float = KEY_FETCH_TIMEOUT_S,
) -> str:
    """The master's key: one already trusted, else fetched from the key port and pinned.

    Without `wait` one fetch is tried (answered within `timeout_s`, at most the usual
    wait); with it (a minion starting before its master), the
    fetch is retried with back-off until `wait(delay)` returns True (stop requested).
    """
    known = known_master_key(settings)
    if known is not None:
        return known[0]
    if not settings.key_port:
        raise ConfigError(
            "the master's key is unknown and its key port is 0: set master_key "
            "(DAYBOOK_MASTER_KEY) or the key port (DAYBOOK_KEY_PORT)"
        )
    # All masters of a fleet present one key pair: the first that answers serves it.
    endpoints = master_endpoints(settings, settings.key_port)
    delay_s = 0.2
    attempts = 0
    while True:
        try:
            key, endpoint = fetch_first_master_key(
                context, endpoints, min(timeout_s, KEY_FETCH_TIMEOUT_S)
            )
            break
        except FleetError as exc:
            if wait is None:
                raise
            attempts += 1
            level = logging.WARNING if attempts == 1 else logging.INFO
            log.log(level, "cannot learn the master's key yet: %s; retrying", exc)
            if wait(delay_s):
                raise FleetError("stopped before the master's key was known") from None
            delay_s = min(delay_s * 2, 10.0)
    path = pin_master_key(keys_dir(settings.data_dir), key, endpoint)
    log.warning(
        "first contact: trusting the master key %s served at %s, pinned in %s; a different "
        "key will be refused from now on (compare with `daybook keys fingerprint` on the master)",
        fingerprint(key),
        endpoint,
        path,
    )
    return key
