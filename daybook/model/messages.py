"""The messages master, minions and operators exchange, as frozen types.

`daybook.wire` turns them into `[topic, payload]` frames and back; here they are plain
values with the rules their fields must pass and the invariants that tie fields together.
"""

from __future__ import annotations

from daybook.errors import InputError
from daybook.model.downloads import Download
from daybook.model.fleet import FleetStatus
from daybook.model.ids import blob_digest, is_valid_digest, is_valid_id
from daybook.model.keys import Key, KeyListing, is_fingerprint, is_role
from daybook.model.leadership import Term
from daybook.model.names import is_valid_service, is_valid_version
from daybook.model.patterns import is_valid_host, is_valid_pattern
from daybook.model.pins import Pin
from daybook.model.results import Report
from daybook.model.rollout import MAX_BATCH_HOSTS, Rollout, parse_batch_size
from daybook.model.rules import checked, record
from daybook.model.state import EncodedState
from daybook.model.sync import Sync

# Caps on what a peer may make us allocate. A sync event for 100,000 patterns fits easily.
MAX_FRAME_BYTES = 16 * 1024 * 1024
MAX_WAIT_S = 24 * 3600.0

OP_SYNC = "sync"
OP_SYNC_RESULT = "sync_result"
# Stop a rolling sync: no further batch starts.
OP_SYNC_ABORT = "sync.abort"
OP_STATUS = "status"
# Any authenticated peer may say who it is; the answer is its key's standing.
OP_HELLO = "hello"
OP_KEYS_LIST = "keys.list"
OP_KEYS_ACCEPT = "keys.accept"
OP_KEYS_REJECT = "keys.reject"
OP_KEYS_DELETE = "keys.delete"
# `daybook push` saying the store holds something new: the master lists it at once.
OP_STORE_CHANGED = "store.changed"
# A minion asking for one service's versions, and signed URLs for those it names: only for
# the services its host's winning pattern maps.
OP_DOWNLOADS = "downloads"
# How many versions one `downloads` request may name.
MAX_DOWNLOAD_VERSIONS = 1000
# What an operator may ask for: accepted operator keys and the master's local socket.
OPERATOR_OPS = frozenset({OP_SYNC, OP_SYNC_RESULT, OP_SYNC_ABORT, OP_STATUS, OP_STORE_CHANGED})
# Key management: the master's local socket only, as salt-key runs on the master.
KEY_OPS = frozenset({OP_KEYS_LIST, OP_KEYS_ACCEPT, OP_KEYS_REJECT, OP_KEYS_DELETE})
# The control socket serves these and nothing else.
CONTROL_OPS = OPERATOR_OPS | KEY_OPS | {OP_HELLO, OP_DOWNLOADS}


def is_control_op(text: str) -> bool:
    return text in CONTROL_OPS


def is_batch_size(text: str) -> bool:
    try:
        parse_batch_size(text)
    except InputError:
        return False
    return True


def is_valid_selector(text: str) -> bool:
    """What `daybook keys accept|reject|delete` takes: a host name or a key fingerprint."""
    return is_fingerprint(text) or is_valid_host(text)


# The longest spread an event asks for: beyond an hour, downloads are throttled by the store.
MAX_SPREAD_S = 3600.0
# The longest heartbeat interval an event may ask for: a fleet of 100,000 at 30 a second.
MAX_HEARTBEAT_S = 3600.0


@record
class SyncEvent:
    """Desired state, published to every minion: apply it idempotently, report once per id.

    `epoch` changes whenever the master restarts; `seq` counts every event of one epoch,
    republishes included, so a gap means a minion missed something. Only hosts matching
    `target` act on the event. `state` is the encoded desired state, named by
    `state_digest`, the digest of exactly those bytes. With `hosts`, only those of the
    matching hosts act on it (a batch of a rolling sync); None: every matching host.
    """

    epoch: int
    seq: int
    sync_id: str = checked(is_valid_id)
    target: str = checked(is_valid_pattern)
    state: bytes = checked(max_len=MAX_FRAME_BYTES, repr=False)
    state_digest: str = checked(is_valid_digest)
    issued_at: float
    # The window over which the master wants the hosts that download to spread their
    # starts, sized to the fleet; a minion waits a random part of it, never more than its
    # own `splay_s`. None: the minion's `splay_s` alone.
    spread_s: float | None = checked(minimum=0, maximum=MAX_SPREAD_S, default=None)
    hosts: tuple[str, ...] | None = checked(is_valid_host, default=None)
    # The publishing leader's term (see daybook.model.leadership): minions act only on
    # events of the highest term they have seen, so a deposed leader cannot make any minion
    # act. 0: a master that holds no term (one from before leader election).
    term: int = checked(minimum=0, default=0)
    # How often the master wants heartbeats, sized to the fleet so that its heartbeats stay
    # within what the master means to spend on them; a minion never goes faster than its own
    # `heartbeat_interval_s`. None: its own interval.
    heartbeat_s: float | None = checked(minimum=0, maximum=MAX_HEARTBEAT_S, default=None)

    def __post_init__(self) -> None:
        if blob_digest(self.state) != self.state_digest:
            raise ValueError("the state does not match its digest")

    @classmethod
    def carrying(
        cls,
        state: EncodedState,
        *,
        epoch: int,
        seq: int,
        sync_id: str,
        target: str,
        issued_at: float,
        spread_s: float | None = None,
        hosts: tuple[str, ...] | None = None,
        term: int = 0,
        heartbeat_s: float | None = None,
    ) -> SyncEvent:
        """The event that publishes `state`."""
        return cls(
            epoch,
            seq,
            sync_id,
            target,
            state.blob,
            state.digest,
            issued_at,
            spread_s,
            hosts,
            term,
            heartbeat_s,
        )

    def addresses(self, host: str) -> bool:
        """Whether `host`, matching the target, is one this event is addressed to."""
        if self.hosts is None:
            return True
        name = host.lower()  # host names compare without case, as patterns match them
        return any(name == addressed.lower() for addressed in self.hosts)

    @property
    def encoded_state(self) -> EncodedState:
        return EncodedState(self.state, self.state_digest)


@record
class Heartbeat:
    """A minion saying it is alive, which process it is, and which event it last applied."""

    host: str = checked(is_valid_host)
    # A new id per minion process start: a changed id means the minion restarted.
    boot_id: str = checked(is_valid_id)
    started_at: float
    sent_at: float
    # The last event applied: (0, 0) and no digest before the first one.
    epoch: int
    seq: int
    state_digest: str | None = checked(is_valid_digest)
    busy: bool


@record
class ControlRequest:
    """An operator's request. Only the operations in `CONTROL_OPS` exist.

    `sync` starts a sync of the hosts matching `target` (all when None); `sync_result` asks
    for the results of `sync_id`. With `wait_s`, the master answers as soon as every expected
    host has reported, or when `wait_s` has passed. `store.changed` has the master list the
    store now rather than at its next poll. `hello` says which host and role the
    sender claims; `downloads` asks for `service`'s versions and URLs for `versions`;
    `keys.accept|reject|delete` name a key by host name or fingerprint.

    A `sync` with `batch` is a rolling sync: the master syncs the hosts batch by batch
    (`deadline_s` is each batch's), halts once more than `max_failures` have failed, waits
    `batch_wait_s` between batches, and carries `pin` to the hosts as it reaches them.
    `sync.abort` stops the rolling sync `sync_id`.
    """

    request_id: str = checked(is_valid_id)
    op: str = checked(is_control_op, max_len=64, problem="is an unknown operation")
    target: str | None = checked(is_valid_pattern, default=None)
    sync_id: str | None = checked(is_valid_id, default=None)
    wait_s: float = checked(maximum=MAX_WAIT_S, default=0.0)
    host: str | None = checked(is_valid_host, default=None)
    role: str | None = checked(is_role, max_len=16, default=None)
    selector: str | None = checked(is_valid_selector, default=None)
    # `sync`: how long the sync may take before it stops waiting (0: the master's default).
    deadline_s: float = checked(maximum=MAX_WAIT_S, default=0.0)
    # `downloads`: the service, and the versions to sign URLs for (none: the listing only).
    service: str | None = checked(is_valid_service, default=None)
    versions: tuple[str, ...] = checked(is_valid_version, default=())
    # A rolling `sync`: the batch size ("3" or "30%"), failures allowed, pause between batches.
    batch: str | None = checked(is_batch_size, max_len=16, default=None)
    max_failures: int = checked(minimum=0, maximum=MAX_BATCH_HOSTS, default=0)
    batch_wait_s: float = checked(minimum=0, maximum=MAX_WAIT_S, default=0.0)
    pin: Pin | None = None

    def __post_init__(self) -> None:
        if self.op in (OP_SYNC_RESULT, OP_SYNC_ABORT) and self.sync_id is None:
            raise ValueError(f"{self.op} needs a sync_id")
        if self.pin is not None and self.batch is None:
            raise ValueError("a pin is rolled out by a rolling sync: give a batch size")
        if self.op == OP_HELLO and (self.host is None or self.role is None):
            raise ValueError("hello needs a host and a role")
        if self.op in KEY_OPS and self.op != OP_KEYS_LIST and self.selector is None:
            raise ValueError(f"{self.op} needs a host name or a fingerprint")
        if self.op == OP_DOWNLOADS and self.service is None:
            raise ValueError("downloads needs a service")
        if len(self.versions) > MAX_DOWNLOAD_VERSIONS:
            raise ValueError(f"at most {MAX_DOWNLOAD_VERSIONS} versions per request")


@record
class ControlReply:
    """The master's answer: an error, or the sync, fleet status or keys asked for.

    `key` is the sender's own key for `hello`, the key changed for `keys.*`; `invalid` marks
    an error caused by the request's input (an unknown or ambiguous key), nothing changed.
    """

    request_id: str = checked(is_valid_id)
    error: str | None = None
    sync: Sync | None = None
    status: FleetStatus | None = None
    keys: KeyListing | None = None
    key: Key | None = None
    invalid: bool = False
    # `downloads`: every version of the service the master lists, signed where asked.
    downloads: tuple[Download, ...] = ()
    # A rolling sync, as it stands: `sync` is then its summary under the rollout's id.
    rollout: Rollout | None = None
    # The fleet's leader as the answering master knows it (None: no master leads, or this
    # master takes no part in leader election). With `standby` the answering master is a
    # standby that refused an operation only the leader does: ask `leader.holder` instead.
    leader: Term | None = None
    standby: bool = False
    # Whether the answering master leads, as it says of every reply (None: a master from
    # before replies said). Who reached it at which address cannot tell: a master leading
    # alone advertises its host name, not the 127.0.0.1 an operator may ask it at.
    leading: bool | None = None


Message = SyncEvent | Report | Heartbeat | ControlRequest | ControlReply
