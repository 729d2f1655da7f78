"""The fleet wire format: typed messages, msgpack payloads, multipart `[topic, payload]` frames.

This is the only module that knows msgpack. Every payload is a map carrying the protocol
version under "v"; decoding validates types, sizes and every name (hosts, patterns, services,
versions, ids) before the message exists, and raises `WireError` for anything else, so a
hostile or corrupt frame can never reach domain code or crash a loop.
"""

from __future__ import annotations

import hashlib
import math
import re
import sys
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Self, TypeVar

import msgpack

from daybook.errors import WireError
from daybook.model.mappings import MappingTable
from daybook.model.names import is_valid_service, is_valid_version
from daybook.model.patterns import is_valid_host, is_valid_pattern
from daybook.model.results import ServiceResult
from daybook.net.keys import is_fingerprint, is_public_key

PROTOCOL_VERSION = 1

# Topics, the first frame of every message. The sync topic is what minions subscribe to.
TOPIC_SYNC = b"sync"
TOPIC_REPORT = b"report"
TOPIC_HEARTBEAT = b"heartbeat"
TOPIC_REQUEST = b"control.request"
TOPIC_REPLY = b"control.reply"

# Caps on what a peer may make us allocate. A sync event for 100,000 patterns fits easily.
MAX_FRAME_BYTES = 16 * 1024 * 1024
MAX_STATE_BYTES = 64 * 1024 * 1024
# Reports, heartbeats and operator requests are small; their sockets use this lower cap.
MAX_MESSAGE_BYTES = 1024 * 1024
MAX_TEXT_LEN = 4096
MAX_WAIT_S = 24 * 3600.0

DIGEST_BYTES = 16
_DIGEST_RE = re.compile(rf"[0-9a-f]{{{DIGEST_BYTES * 2}}}")
_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")

OP_SYNC = "sync"
OP_SYNC_RESULT = "sync_result"
OP_STATUS = "status"
# Any authenticated peer may say who it is; the answer is its key's standing.
OP_HELLO = "hello"
OP_KEYS_LIST = "keys.list"
OP_KEYS_ACCEPT = "keys.accept"
OP_KEYS_REJECT = "keys.reject"
OP_KEYS_DELETE = "keys.delete"
# What an operator may ask for: accepted operator keys and the master's local socket.
OPERATOR_OPS = frozenset({OP_SYNC, OP_SYNC_RESULT, OP_STATUS})
# Key management: the master's local socket only, as salt-key runs on the master.
KEY_OPS = frozenset({OP_KEYS_LIST, OP_KEYS_ACCEPT, OP_KEYS_REJECT, OP_KEYS_DELETE})
# The control socket serves these and nothing else.
CONTROL_OPS = OPERATOR_OPS | KEY_OPS | {OP_HELLO}

KEY_ROLES = ("minion", "operator")
KEY_STATES = ("accepted", "pending", "rejected")
MAX_ADDRESS_LEN = 256

SYNC_ORIGINS = frozenset({"operator", "auto", "startup"})


def versions_digest(versions: Iterable[str]) -> str:
    """A short, order-independent digest of one service's set of versions.

    The master computes it from the store listing, a minion from what it installed; equal
    digests mean a minion has nothing to fetch for that service.
    """
    text = "\n".join(sorted(set(versions)))
    return hashlib.blake2b(text.encode(), digest_size=DIGEST_BYTES).hexdigest()


EMPTY_DIGEST = versions_digest(())


def is_valid_id(text: str) -> bool:
    return _ID_RE.fullmatch(text) is not None


def is_valid_digest(text: str) -> bool:
    return _DIGEST_RE.fullmatch(text) is not None


def clip_text(text: str, max_len: int = MAX_TEXT_LEN) -> str:
    """Shorten a free-text reason so it always fits the wire's limit."""
    return text if len(text) <= max_len else text[: max_len - 3] + "..."


# -- validation of decoded msgpack data ---------------------------------------------------------

T = TypeVar("T")


def _pack(data: Mapping[str, Any]) -> bytes:
    return msgpack.packb(data, use_bin_type=True)


def _unpack(payload: bytes, what: str, max_bytes: int) -> Any:
    if not isinstance(payload, bytes | bytearray | memoryview):
        raise WireError(f"{what}: payload is not bytes")
    if len(payload) > max_bytes:
        raise WireError(f"{what}: payload of {len(payload)} bytes exceeds {max_bytes}")
    try:
        # The length check above also bounds msgpack's own per-object limits, which default
        # to the buffer size; with strict_map_key every map key must be a string.
        return msgpack.unpackb(payload, raw=False, strict_map_key=True, use_list=True)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise WireError(f"{what}: not valid msgpack ({type(exc).__name__})") from None


class _Fields:
    """Typed, validating access to one decoded msgpack map."""

    def __init__(self, data: object, what: str) -> None:
        if not isinstance(data, dict):
            raise WireError(f"{what}: expected a map, got {type(data).__name__}")
        self._data: dict[str, Any] = data
        self.what = what

    def _fail(self, key: str, problem: str) -> WireError:
        return WireError(f"{self.what}: field {key!r} {problem}")

    def _raw(self, key: str) -> Any:
        if key not in self._data:
            raise self._fail(key, "is missing")
        return self._data[key]

    def has(self, key: str) -> bool:
        return self._data.get(key) is not None

    def text(
        self,
        key: str,
        check: Callable[[str], bool] | None = None,
        *,
        max_len: int = MAX_TEXT_LEN,
    ) -> str:
        value = self._raw(key)
        # The valid case first and cheaply; the slow path says what is wrong.
        if type(value) is str and len(value) <= max_len and (check is None or check(value)):
            return value
        return _text(value, check, max_len, lambda p: self._fail(key, p))

    def opt_text(
        self,
        key: str,
        check: Callable[[str], bool] | None = None,
        *,
        max_len: int = MAX_TEXT_LEN,
    ) -> str | None:
        return self.text(key, check, max_len=max_len) if self.has(key) else None

    def integer(self, key: str, *, minimum: int = 0, maximum: int = 2**63 - 1) -> int:
        value = self._raw(key)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self._fail(key, f"is not an integer ({type(value).__name__})")
        if not minimum <= value <= maximum:
            raise self._fail(key, f"is out of range ({value})")
        return value

    def number(self, key: str, *, minimum: float = 0.0, maximum: float = 1e12) -> float:
        value = self._raw(key)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self._fail(key, f"is not a number ({type(value).__name__})")
        number = float(value)
        if not math.isfinite(number) or not minimum <= number <= maximum:
            raise self._fail(key, f"is out of range ({value})")
        return number

    def boolean(self, key: str) -> bool:
        value = self._raw(key)
        if not isinstance(value, bool):
            raise self._fail(key, f"is not a boolean ({type(value).__name__})")
        return value

    def blob(self, key: str, *, max_len: int) -> bytes:
        value = self._raw(key)
        if not isinstance(value, bytes):
            raise self._fail(key, f"is not binary ({type(value).__name__})")
        if len(value) > max_len:
            raise self._fail(key, f"is longer than {max_len} bytes")
        return value

    def texts(self, key: str, check: Callable[[str], bool]) -> tuple[str, ...]:
        return _texts(self._raw(key), check, lambda p: self._fail(key, p))

    def table(
        self, key: str, check_key: Callable[[str], bool], convert: Callable[[Any, str], T]
    ) -> dict[str, T]:
        """A map of validated keys to values made by `convert(value, context)`."""
        value = self._raw(key)
        if not isinstance(value, dict):
            raise self._fail(key, f"is not a map ({type(value).__name__})")
        result: dict[str, T] = {}
        for name, item in value.items():
            if not isinstance(name, str) or not check_key(name):
                raise self._fail(key, f"has an invalid key {name!r:.80}")
            result[name] = convert(item, f"{self.what}.{key}[{name}]")
        return result

    def nested(self, key: str) -> _Fields:
        return _Fields(self._raw(key), f"{self.what}.{key}")

    def items(self, key: str) -> list[Any]:
        value = self._raw(key)
        if not isinstance(value, list):
            raise self._fail(key, f"is not a list ({type(value).__name__})")
        return value


def _text(
    value: object,
    check: Callable[[str], bool] | None,
    max_len: int,
    fail: Callable[[str], WireError],
) -> str:
    if not isinstance(value, str):
        raise fail(f"is not a string ({type(value).__name__})")
    if len(value) > max_len:
        raise fail(f"is longer than {max_len} characters")
    if check is not None and not check(value):
        raise fail(f"is not valid ({value!r:.80})")
    return value


def _texts(
    value: object, check: Callable[[str], bool], fail: Callable[[str], WireError]
) -> tuple[str, ...]:
    """A list of names (versions, services). Interned: the same few names come back in
    every report of every host, and the master holds thousands of reports at once."""
    if type(value) is list and all(
        type(item) is str and len(item) <= MAX_TEXT_LEN and check(item) for item in value
    ):
        return tuple(map(sys.intern, value))
    if not isinstance(value, list):
        raise fail(f"is not a list ({type(value).__name__})")
    return tuple(sys.intern(_text(item, check, MAX_TEXT_LEN, fail)) for item in value)


def _versions(value: Any, context: str) -> tuple[str, ...]:
    def fail(problem: str) -> WireError:
        return WireError(f"{context} {problem}")

    return _texts(value, is_valid_version, fail)


def _digest(value: Any, context: str) -> str:
    def fail(problem: str) -> WireError:
        return WireError(f"{context} {problem}")

    return _text(value, is_valid_digest, DIGEST_BYTES * 2, fail)


def _check_version_field(fields: _Fields) -> None:
    version = fields.integer("v", maximum=2**31)
    if version != PROTOCOL_VERSION:
        raise WireError(f"{fields.what}: unknown protocol version {version}")


# -- the desired state carried by sync events ---------------------------------------------------


@dataclass(frozen=True)
class DesiredState:
    """What every host should have: the mapping table and each service's versions digest.

    A service missing from `digests` has no versions in the store (`EMPTY_DIGEST`).
    """

    mappings: MappingTable
    digests: Mapping[str, str]

    def digest_for(self, service: str) -> str:
        return self.digests.get(service, EMPTY_DIGEST)

    def encode(self) -> EncodedState:
        # Sorted so the same state always makes the same bytes, and so the same digest.
        document = {
            "v": PROTOCOL_VERSION,
            "mappings": {p: list(self.mappings[p]) for p in sorted(self.mappings)},
            "digests": {s: self.digests[s] for s in sorted(self.digests)},
        }
        blob = zlib.compress(_pack(document), 9)
        return EncodedState(blob, _blob_digest(blob))


def _blob_digest(blob: bytes) -> str:
    return hashlib.blake2b(blob, digest_size=DIGEST_BYTES).hexdigest()


@dataclass(frozen=True)
class EncodedState:
    """A desired state as it travels: compressed msgpack, named by the digest of its bytes.

    Minions decode a given digest once and reuse the result (`SyncEvent.decode` has already
    checked that the bytes match the digest), so a republished, unchanged state costs them
    one dictionary lookup.
    """

    blob: bytes = field(repr=False)
    digest: str

    def decode(self) -> DesiredState:
        """Inflate and validate; raise WireError for anything malformed or too large."""
        inflater = zlib.decompressobj()
        try:
            raw = inflater.decompress(self.blob, MAX_STATE_BYTES)
        except zlib.error as exc:
            raise WireError(f"sync state: not valid zlib data ({exc})") from None
        if inflater.unconsumed_tail or not inflater.eof:
            raise WireError(
                f"sync state: truncated, or larger than {MAX_STATE_BYTES} bytes inflated"
            )
        fields = _Fields(_unpack(raw, "sync state", MAX_STATE_BYTES), "sync state")
        _check_version_field(fields)

        def services(value: Any, context: str) -> tuple[str, ...]:
            names = _texts(value, is_valid_service, lambda p: WireError(f"{context} {p}"))
            return tuple(dict.fromkeys(names))

        mappings = fields.table("mappings", is_valid_pattern, services)
        return DesiredState(
            mappings={pattern.lower(): names for pattern, names in mappings.items()},
            digests=fields.table("digests", is_valid_service, _digest),
        )


# -- messages -----------------------------------------------------------------------------------


class _Message:
    """Common framing: `encode()` gives `[topic, payload]`; `decode(payload)` checks all."""

    TOPIC: ClassVar[bytes]
    WHAT: ClassVar[str]

    def to_fields(self) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def from_fields(cls, fields: _Fields) -> Self:
        raise NotImplementedError

    def encode(self) -> list[bytes]:
        return [self.TOPIC, _pack({"v": PROTOCOL_VERSION, **self.to_fields()})]

    @classmethod
    def decode(cls, payload: bytes, *, max_bytes: int = MAX_FRAME_BYTES) -> Self:
        fields = _Fields(_unpack(payload, cls.WHAT, max_bytes), cls.WHAT)
        _check_version_field(fields)
        return cls.from_fields(fields)


@dataclass(frozen=True)
class SyncEvent(_Message):
    """Desired state, published to every minion: apply it idempotently, report once per id.

    `epoch` changes whenever the master restarts; `seq` counts every event of one epoch,
    republishes included, so a gap means a minion missed something. Only hosts matching
    `target` act on the event.
    """

    TOPIC: ClassVar[bytes] = TOPIC_SYNC
    WHAT: ClassVar[str] = "sync event"

    epoch: int
    seq: int
    sync_id: str
    target: str
    state: EncodedState
    issued_at: float

    def to_fields(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "seq": self.seq,
            "sync_id": self.sync_id,
            "target": self.target,
            "state": self.state.blob,
            "state_digest": self.state.digest,
            "issued_at": self.issued_at,
        }

    @classmethod
    def from_fields(cls, fields: _Fields) -> Self:
        blob = fields.blob("state", max_len=MAX_FRAME_BYTES)
        digest = fields.text("state_digest", is_valid_digest)
        if _blob_digest(blob) != digest:
            raise WireError("sync event: the state does not match its digest")
        return cls(
            epoch=fields.integer("epoch"),
            seq=fields.integer("seq"),
            sync_id=fields.text("sync_id", is_valid_id),
            target=fields.text("target", is_valid_pattern).lower(),
            state=EncodedState(blob, digest),
            issued_at=fields.number("issued_at"),
        )


def _service_result_fields(result: ServiceResult) -> dict[str, Any]:
    return {
        "installed": list(result.installed),
        "present": list(result.present),
        "failed": dict(result.failed),
        "error": result.error,
    }


def _service_result(value: Any, context: str) -> ServiceResult:
    fields = _Fields(value, context)

    def reason(item: Any, where: str) -> str:
        return _text(item, None, MAX_TEXT_LEN, lambda p: WireError(f"{where} {p}"))

    return ServiceResult(
        installed=fields.texts("installed", is_valid_version),
        present=fields.texts("present", is_valid_version),
        failed=fields.table("failed", is_valid_version, reason),
        error=fields.opt_text("error"),
    )


@dataclass(frozen=True)
class Report(_Message):
    """One minion's answer to one sync: what it installed, found present, or failed and why.

    `report_id` is unique per report, so a report sent twice (after a reconnect or a master
    restart) is recorded once. `error` is set when the sync failed outside any one service.
    """

    TOPIC: ClassVar[bytes] = TOPIC_REPORT
    WHAT: ClassVar[str] = "report"

    report_id: str
    host: str
    sync_id: str
    epoch: int
    seq: int
    state_digest: str
    pattern: str | None
    services: Mapping[str, ServiceResult]
    installed: Mapping[str, tuple[str, ...]]
    started_at: float
    finished_at: float
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and all(result.ok for result in self.services.values())

    @property
    def duration_s(self) -> float:
        return max(0.0, self.finished_at - self.started_at)

    def to_fields(self) -> dict[str, Any]:
        return {
            "report_id": self.report_id,
            "host": self.host,
            "sync_id": self.sync_id,
            "epoch": self.epoch,
            "seq": self.seq,
            "state_digest": self.state_digest,
            "pattern": self.pattern,
            "services": {
                name: _service_result_fields(result) for name, result in self.services.items()
            },
            "installed": {name: list(versions) for name, versions in self.installed.items()},
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "error": self.error,
        }

    @classmethod
    def from_fields(cls, fields: _Fields) -> Self:
        return cls(
            report_id=fields.text("report_id", is_valid_id),
            host=fields.text("host", is_valid_host),
            sync_id=fields.text("sync_id", is_valid_id),
            epoch=fields.integer("epoch"),
            seq=fields.integer("seq"),
            state_digest=fields.text("state_digest", is_valid_digest),
            pattern=fields.opt_text("pattern", is_valid_pattern),
            services=fields.table("services", is_valid_service, _service_result),
            installed=fields.table("installed", is_valid_service, _versions),
            started_at=fields.number("started_at"),
            finished_at=fields.number("finished_at"),
            error=fields.opt_text("error"),
        )


@dataclass(frozen=True)
class Heartbeat(_Message):
    """A minion saying it is alive, which process it is, and which event it last applied."""

    TOPIC: ClassVar[bytes] = TOPIC_HEARTBEAT
    WHAT: ClassVar[str] = "heartbeat"

    host: str
    # A new id per minion process start: a changed id means the minion restarted.
    boot_id: str
    started_at: float
    sent_at: float
    # The last event applied: (0, 0) and no digest before the first one.
    epoch: int = 0
    seq: int = 0
    state_digest: str | None = None
    busy: bool = False

    def to_fields(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "boot_id": self.boot_id,
            "started_at": self.started_at,
            "sent_at": self.sent_at,
            "epoch": self.epoch,
            "seq": self.seq,
            "state_digest": self.state_digest,
            "busy": self.busy,
        }

    @classmethod
    def from_fields(cls, fields: _Fields) -> Self:
        return cls(
            host=fields.text("host", is_valid_host),
            boot_id=fields.text("boot_id", is_valid_id),
            started_at=fields.number("started_at"),
            sent_at=fields.number("sent_at"),
            epoch=fields.integer("epoch"),
            seq=fields.integer("seq"),
            state_digest=fields.opt_text("state_digest", is_valid_digest),
            busy=fields.boolean("busy"),
        )


@dataclass(frozen=True)
class ControlRequest(_Message):
    """An operator's request. Only the operations in `CONTROL_OPS` exist.

    `sync` starts a sync of the hosts matching `target` (all when None); `sync_result` asks
    for the results of `sync_id`. With `wait_s`, the master answers as soon as every expected
    host has reported, or when `wait_s` has passed.
    """

    TOPIC: ClassVar[bytes] = TOPIC_REQUEST
    WHAT: ClassVar[str] = "control request"

    request_id: str
    op: str
    target: str | None = None
    sync_id: str | None = None
    wait_s: float = 0.0
    # `hello`: the host name the sender claims, and whether it is a minion or an operator.
    host: str | None = None
    role: str | None = None
    # `keys.accept|reject|delete`: a host name or a key fingerprint.
    selector: str | None = None

    def to_fields(self) -> dict[str, Any]:
        return {
            "request_id": self.request_id,
            "op": self.op,
            "target": self.target,
            "sync_id": self.sync_id,
            "wait_s": self.wait_s,
            "host": self.host,
            "role": self.role,
            "selector": self.selector,
        }

    @classmethod
    def from_fields(cls, fields: _Fields) -> Self:
        op = fields.text("op", max_len=64)
        if op not in CONTROL_OPS:
            raise WireError(f"control request: unknown operation {op!r:.64}")
        request = cls(
            request_id=fields.text("request_id", is_valid_id),
            op=op,
            target=fields.opt_text("target", is_valid_pattern),
            sync_id=fields.opt_text("sync_id", is_valid_id),
            wait_s=fields.number("wait_s", maximum=MAX_WAIT_S),
            host=fields.opt_text("host", is_valid_host),
            role=fields.opt_text("role", _is_role),
            selector=fields.opt_text("selector", is_valid_selector),
        )
        if op == OP_SYNC_RESULT and request.sync_id is None:
            raise WireError("control request: sync_result needs a sync_id")
        if op == OP_HELLO and (request.host is None or request.role is None):
            raise WireError("control request: hello needs a host and a role")
        if op in KEY_OPS and op != OP_KEYS_LIST and request.selector is None:
            raise WireError(f"control request: {op} needs a host name or a fingerprint")
        return request


def _is_role(text: str) -> bool:
    return text in KEY_ROLES


def is_valid_selector(text: str) -> bool:
    """What `daybook keys accept|reject|delete` takes: a host name or a key fingerprint."""
    return is_fingerprint(text) or is_valid_host(text)


@dataclass(frozen=True)
class KeyInfo:
    """One key the master knows: whose it is (as claimed or bound), its standing, and where
    it was last seen from. `host` is None until the key names one."""

    public_key: str
    fingerprint: str
    role: str
    state: str
    host: str | None
    address: str | None
    first_seen: float
    last_seen: float

    def to_fields(self) -> dict[str, Any]:
        return {
            "public_key": self.public_key,
            "fingerprint": self.fingerprint,
            "role": self.role,
            "state": self.state,
            "host": self.host,
            "address": self.address,
            "first_seen": self.first_seen,
            "last_seen": self.last_seen,
        }

    @classmethod
    def from_fields(cls, fields: _Fields) -> KeyInfo:
        state = fields.text("state", max_len=16)
        if state not in KEY_STATES:
            raise WireError(f"{fields.what}: unknown key state {state!r}")
        return cls(
            public_key=fields.text("public_key", is_public_key, max_len=40),
            fingerprint=fields.text("fingerprint", is_fingerprint, max_len=64),
            role=fields.text("role", _is_role, max_len=16),
            state=state,
            host=fields.opt_text("host", is_valid_host),
            address=fields.opt_text("address", max_len=MAX_ADDRESS_LEN),
            first_seen=fields.number("first_seen"),
            last_seen=fields.number("last_seen"),
        )


@dataclass(frozen=True)
class KeyListing:
    """Every key the master knows, by standing."""

    accepted: tuple[KeyInfo, ...] = ()
    pending: tuple[KeyInfo, ...] = ()
    rejected: tuple[KeyInfo, ...] = ()

    def to_fields(self) -> dict[str, Any]:
        return {state: [key.to_fields() for key in getattr(self, state)] for state in KEY_STATES}

    @classmethod
    def from_fields(cls, fields: _Fields) -> KeyListing:
        def keys(state: str) -> tuple[KeyInfo, ...]:
            found = tuple(
                KeyInfo.from_fields(_Fields(item, f"{fields.what}.{state}"))
                for item in fields.items(state)
            )
            if any(key.state != state for key in found):
                raise WireError(f"{fields.what}.{state}: a key in another state")
            return found

        return cls(accepted=keys("accepted"), pending=keys("pending"), rejected=keys("rejected"))


@dataclass(frozen=True)
class SyncSummary:
    """One sync as the master sees it: whom it expects, and the report of each host so far."""

    sync_id: str
    target: str
    origin: str
    issued_at: float
    expected: tuple[str, ...]
    results: Mapping[str, Report]

    @property
    def missing(self) -> tuple[str, ...]:
        return tuple(host for host in self.expected if host not in self.results)

    @property
    def complete(self) -> bool:
        return all(host in self.results for host in self.expected)

    @property
    def ok(self) -> bool:
        return self.complete and all(report.ok for report in self.results.values())

    def to_fields(self) -> dict[str, Any]:
        return {
            "sync_id": self.sync_id,
            "target": self.target,
            "origin": self.origin,
            "issued_at": self.issued_at,
            "expected": list(self.expected),
            "results": {host: report.to_fields() for host, report in self.results.items()},
        }

    @classmethod
    def from_fields(cls, fields: _Fields) -> SyncSummary:
        origin = fields.text("origin", max_len=32)
        if origin not in SYNC_ORIGINS:
            raise WireError(f"{fields.what}: unknown origin {origin!r}")
        return cls(
            sync_id=fields.text("sync_id", is_valid_id),
            target=fields.text("target", is_valid_pattern),
            origin=origin,
            issued_at=fields.number("issued_at"),
            expected=fields.texts("expected", is_valid_host),
            results=fields.table("results", is_valid_host, _embedded_report),
        )


def _embedded_report(value: Any, context: str) -> Report:
    return Report.from_fields(_Fields(value, context))


@dataclass(frozen=True)
class HostStatus:
    """One known host: liveness from heartbeats, and its most recent report."""

    host: str
    up: bool
    last_seen: float
    boot_id: str | None
    started_at: float | None
    last_report: Report | None

    def to_fields(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "up": self.up,
            "last_seen": self.last_seen,
            "boot_id": self.boot_id,
            "started_at": self.started_at,
            "last_report": self.last_report.to_fields() if self.last_report else None,
        }

    @classmethod
    def from_fields(cls, fields: _Fields) -> HostStatus:
        return cls(
            host=fields.text("host", is_valid_host),
            up=fields.boolean("up"),
            last_seen=fields.number("last_seen"),
            boot_id=fields.opt_text("boot_id", is_valid_id),
            started_at=fields.number("started_at") if fields.has("started_at") else None,
            last_report=(
                Report.from_fields(fields.nested("last_report"))
                if fields.has("last_report")
                else None
            ),
        )


@dataclass(frozen=True)
class FleetStatus:
    """Every host the master knows, at the master's clock `now`."""

    epoch: int
    now: float
    hosts: Mapping[str, HostStatus]

    def to_fields(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "now": self.now,
            "hosts": {host: status.to_fields() for host, status in self.hosts.items()},
        }

    @classmethod
    def from_fields(cls, fields: _Fields) -> FleetStatus:
        def host_status(value: Any, context: str) -> HostStatus:
            return HostStatus.from_fields(_Fields(value, context))

        return cls(
            epoch=fields.integer("epoch"),
            now=fields.number("now"),
            hosts=fields.table("hosts", is_valid_host, host_status),
        )


@dataclass(frozen=True)
class ControlReply(_Message):
    """The master's answer: an error, or the sync summary, fleet status or keys asked for.

    `key` is the sender's own key for `hello`, the key changed for `keys.*`; `invalid` marks
    an error caused by the request's input (an unknown or ambiguous key), nothing changed.
    """

    TOPIC: ClassVar[bytes] = TOPIC_REPLY
    WHAT: ClassVar[str] = "control reply"

    request_id: str
    error: str | None = None
    sync: SyncSummary | None = None
    status: FleetStatus | None = None
    keys: KeyListing | None = None
    key: KeyInfo | None = None
    invalid: bool = False

    def to_fields(self) -> dict[str, Any]:
        return {
            "request_id": self.request_id,
            "error": self.error,
            "sync": self.sync.to_fields() if self.sync else None,
            "status": self.status.to_fields() if self.status else None,
            "keys": self.keys.to_fields() if self.keys else None,
            "key": self.key.to_fields() if self.key else None,
            "invalid": self.invalid,
        }

    @classmethod
    def from_fields(cls, fields: _Fields) -> Self:
        return cls(
            request_id=fields.text("request_id", is_valid_id),
            error=fields.opt_text("error"),
            sync=SyncSummary.from_fields(fields.nested("sync")) if fields.has("sync") else None,
            status=(
                FleetStatus.from_fields(fields.nested("status")) if fields.has("status") else None
            ),
            keys=KeyListing.from_fields(fields.nested("keys")) if fields.has("keys") else None,
            key=KeyInfo.from_fields(fields.nested("key")) if fields.has("key") else None,
            invalid=fields.boolean("invalid") if fields.has("invalid") else False,
        )


Message = SyncEvent | Report | Heartbeat | ControlRequest | ControlReply

_BY_TOPIC: dict[bytes, type[SyncEvent | Report | Heartbeat | ControlRequest | ControlReply]] = {
    TOPIC_SYNC: SyncEvent,
    TOPIC_REPORT: Report,
    TOPIC_HEARTBEAT: Heartbeat,
    TOPIC_REQUEST: ControlRequest,
    TOPIC_REPLY: ControlReply,
}


def decode_frames(frames: Sequence[bytes], *, max_bytes: int = MAX_FRAME_BYTES) -> Message:
    """Decode one `[topic, payload]` message; WireError for anything else."""
    if len(frames) != 2:
        raise WireError(f"expected 2 frames [topic, payload], got {len(frames)}")
    topic, payload = frames
    kind = _BY_TOPIC.get(bytes(topic))
    if kind is None:
        raise WireError(f"unknown topic {bytes(topic)[:64]!r}")
    return kind.decode(bytes(payload), max_bytes=max_bytes)


def decode_as(kind: type[T], frames: Sequence[bytes], *, max_bytes: int) -> T:
    """Decode and insist on one kind (a report arriving on the control socket is bad)."""
    message = decode_frames(frames, max_bytes=max_bytes)
    if isinstance(message, kind):
        return message
    raise WireError(f"unexpected {type(message).__name__} on this socket")
