"""The wire format: the model's types as msgpack payloads in `[topic, payload]` frames; a
payload longer than PAYLOAD_FRAME_BYTES goes in several frames after the topic.

This is the only module that knows msgpack (through msgspec). Each codec is derived from a
model dataclass: msgspec checks the structure and every field's type while it decodes,
then the field rules declared in the model (`daybook.model.rules`) check names, lengths
and ranges. Anything malformed raises `WireError` before a message exists, so a hostile or
corrupt frame can never reach domain code or crash a loop.

Every payload is a map whose first entry is the protocol version, `"v": 1`. Keeping it
first lets the decoder check it from the bytes before decoding the body, and keeps these
frames identical to what earlier versions of Daybook sent.

The same types also have a JSON encoding derived from their fields (`to_json`,
`from_json`), for files and the install child; the human and API JSON shapes are views of
the same types, in `daybook.views`.
"""

from __future__ import annotations

import dataclasses
import re
import sys
import types
import zlib
from collections.abc import Callable, Mapping, Sequence
from functools import cache, partial
from typing import Any, TypeVar, Union, cast, get_args, get_origin, get_type_hints

import msgspec

from daybook.errors import WireError
from daybook.model.ids import blob_digest, is_valid_id
from daybook.model.messages import (
    MAX_FRAME_BYTES,
    ControlReply,
    ControlRequest,
    Heartbeat,
    Message,
    SyncEvent,
)
from daybook.model.results import Report
from daybook.model.rules import PLAIN, RULE_KEY, Rule
from daybook.model.state import DesiredState, EncodedState

PROTOCOL_VERSION = 1

# Topics, the first frame of every message. The sync topic is what minions subscribe to.
TOPIC_SYNC = b"sync"
TOPIC_REPORT = b"report"
TOPIC_HEARTBEAT = b"heartbeat"
TOPIC_REQUEST = b"control.request"
TOPIC_REPLY = b"control.reply"

# A desired state may inflate to this much; more is refused as a decompression bomb.
MAX_STATE_BYTES = 64 * 1024 * 1024
# Reports, heartbeats and operator requests are small; their sockets use this lower cap.
MAX_MESSAGE_BYTES = 1024 * 1024
# A payload longer than this goes in frames of this size. The master's I/O thread
# encrypts every frame once per subscriber, in three buffers of the frame's size; under
# the master's mmap threshold (8 KB: see master.heap) they come from its heap. A sync
# event of 9.5 KB in one frame (a state of 1,000 patterns) took three mappings made and
# unmade per subscriber instead: 1.2 s more for a sync of 8,900 minions.
PAYLOAD_FRAME_BYTES = 7 * 1024

TOPICS: Mapping[type[Message], bytes] = {
    SyncEvent: TOPIC_SYNC,
    Report: TOPIC_REPORT,
    Heartbeat: TOPIC_HEARTBEAT,
    ControlRequest: TOPIC_REQUEST,
    ControlReply: TOPIC_REPLY,
}
_BY_TOPIC: Mapping[bytes, type[Message]] = {topic: kind for kind, topic in TOPICS.items()}

T = TypeVar("T")

_VERSION_ENTRY = b"\xa1v" + bytes([PROTOCOL_VERSION])  # "v": 1, a fixstr key and a fixint
_ENCODER = msgspec.msgpack.Encoder()
_JSON_ENCODER = msgspec.json.Encoder()


# -- encoding -----------------------------------------------------------------------------------


def encode(message: Message) -> list[bytes]:
    """The frames of one message: its topic, then its payload, in frames of
    PAYLOAD_FRAME_BYTES when it is longer."""
    topic, body = TOPICS[type(message)], payload(message)
    if len(body) <= PAYLOAD_FRAME_BYTES:
        return [topic, body]
    return [
        topic,
        *(body[at : at + PAYLOAD_FRAME_BYTES] for at in range(0, len(body), PAYLOAD_FRAME_BYTES)),
    ]


def payload(value: object) -> bytes:
    """A model value as a versioned msgpack map: `"v"` first, then its fields in order."""
    body = _ENCODER.encode(value)
    count, header = _map_header(body)
    return _map_header_bytes(count + 1) + _VERSION_ENTRY + body[header:]


def _map_header(data: bytes) -> tuple[int, int]:
    """The entry count of the msgpack map `data` starts with, and its header's length."""
    first = data[0] if data else 0
    if 0x80 <= first <= 0x8F:
        return first & 0x0F, 1
    if first == 0xDE and len(data) >= 3:
        return int.from_bytes(data[1:3]), 3
    if first == 0xDF and len(data) >= 5:
        return int.from_bytes(data[1:5]), 5
    raise ValueError("not a msgpack map")


def _map_header_bytes(count: int) -> bytes:
    if count <= 0x0F:
        return bytes([0x80 | count])
    if count <= 0xFFFF:
        return b"\xde" + count.to_bytes(2)
    return b"\xdf" + count.to_bytes(4)


def encode_state(state: DesiredState) -> EncodedState:
    """Compress a desired state, sorted so the same state always makes the same bytes, and
    so the same digest."""
    ordered = DesiredState(
        mappings={pattern: state.mappings[pattern] for pattern in sorted(state.mappings)},
        digests={service: state.digests[service] for service in sorted(state.digests)},
        pins={service: state.pins[service] for service in sorted(state.pins)},
    )
    blob = zlib.compress(payload(ordered), 9)
    return EncodedState(blob, blob_digest(blob))


def to_json(value: object) -> bytes:
    """A model value (or a list or map of them) as JSON of its fields, for files and pipes."""
    return _JSON_ENCODER.encode(value)


def to_builtins(value: object) -> Any:
    """A model value as the dicts, lists and scalars `to_json` would write."""
    return msgspec.to_builtins(value)


# -- decoding -----------------------------------------------------------------------------------


def decode_frames(frames: Sequence[bytes], *, max_bytes: int = MAX_FRAME_BYTES) -> Message:
    """Decode one message, its topic then its payload in one frame or more; WireError for
    anything else."""
    return decode_with_payload(frames, max_bytes=max_bytes)[0]


def decode_with_payload(
    frames: Sequence[bytes], *, max_bytes: int = MAX_FRAME_BYTES
) -> tuple[Message, bytes]:
    """`decode_frames`, and the payload it decoded, for whoever keeps it as it came."""
    if len(frames) < 2:
        raise WireError(f"expected 2 frames [topic, payload], got {len(frames)}")
    topic = frames[0]
    kind = _BY_TOPIC.get(bytes(topic))
    if kind is None:
        raise WireError(f"unknown topic {bytes(topic)[:64]!r}")
    if len(frames) > 2:
        _check_parts(frames[1:], max_bytes)
    data = joined_payload(frames)
    return decode(kind, data, max_bytes=max_bytes), data


def joined_payload(frames: Sequence[bytes]) -> bytes:
    """The payload of a message `decode_frames` accepted: its frames after the topic."""
    return bytes(frames[1]) if len(frames) == 2 else b"".join(bytes(part) for part in frames[1:])


def _check_parts(parts: Sequence[bytes], max_bytes: int) -> None:
    """A payload in several frames, checked before they are joined."""
    if not all(parts):
        raise WireError("an empty payload frame")
    size = sum(len(part) for part in parts)
    if size > max_bytes:
        raise WireError(f"a payload of {size} bytes exceeds {max_bytes}")


def decode_as(kind: type[T], frames: Sequence[bytes], *, max_bytes: int) -> T:
    """Decode and insist on one kind (a report arriving on the control socket is bad)."""
    message = decode_frames(frames, max_bytes=max_bytes)
    if isinstance(message, kind):
        return message
    raise WireError(f"unexpected {type(message).__name__} on this socket")


def decode(kind: type[T], data: bytes, *, max_bytes: int = MAX_FRAME_BYTES) -> T:
    """One versioned msgpack payload as a `kind`, checked through and through."""
    codec = _codec(cast(Any, kind))
    if not isinstance(data, bytes | bytearray | memoryview):
        raise WireError(f"{codec.what}: payload is not bytes")
    if len(data) > max_bytes:
        raise WireError(f"{codec.what}: payload of {len(data)} bytes exceeds {max_bytes}")
    _check_version(data, codec.what)
    return cast(T, codec.checked(codec.from_msgpack, data))


@dataclasses.dataclass(frozen=True)
class _Identified:
    """What every control request carries first of all; msgspec skips the other fields."""

    request_id: str


_IDENTIFIED = msgspec.msgpack.Decoder(_Identified)


def request_id_of(frames: Sequence[bytes], *, max_bytes: int) -> str | None:
    """The id of a control request that failed to decode, read as leniently as can be, so
    the master can answer why instead of leaving its sender to take the silence for a
    master gone away. None when the frames are no request, or hold no valid id."""
    if len(frames) < 2 or bytes(frames[0]) != TOPIC_REQUEST:
        return None
    if sum(len(part) for part in frames[1:]) > max_bytes:
        return None
    try:
        request_id = _IDENTIFIED.decode(joined_payload(frames)).request_id
    except (msgspec.DecodeError, UnicodeDecodeError):  # a ValidationError is a DecodeError
        return None
    return request_id if is_valid_id(request_id) else None


def decode_again(kind: type[T], data: bytes) -> T:
    """A payload this process has decoded as a `kind` and checked before, decoded again
    without the checks, which cost five times the decoding: for whoever keeps what came
    on the wire as it came, the smaller, and hands out the value on demand."""
    return cast(T, _codec(cast(Any, kind)).from_msgpack(data))


def decode_state(state: EncodedState) -> DesiredState:
    """Inflate and validate; raise WireError for anything malformed or too large."""
    inflater = zlib.decompressobj()
    try:
        raw = inflater.decompress(state.blob, MAX_STATE_BYTES)
    except zlib.error as exc:
        raise WireError(f"sync state: not valid zlib data ({exc})") from None
    if inflater.unconsumed_tail or not inflater.eof:
        raise WireError(f"sync state: truncated, or larger than {MAX_STATE_BYTES} bytes inflated")
    desired = decode(DesiredState, raw, max_bytes=MAX_STATE_BYTES)
    # Patterns ignore case and a service listed twice is listed once, as the registry
    # reads them; a state written by another master is held to the same.
    return DesiredState(
        mappings={
            pattern.lower(): tuple(dict.fromkeys(services))
            for pattern, services in desired.mappings.items()
        },
        digests=desired.digests,
        pins=desired.pins,
    )


def from_json(kind: type[T], data: bytes | str) -> T:
    """JSON made by `to_json` back into a `kind`, checked like a wire payload."""
    codec = _codec(cast(Any, kind))
    return cast(T, codec.checked(codec.from_json, data))


def from_builtins(kind: type[T], value: object) -> T:
    """Dicts and lists (as `json.loads` gives them) into a `kind`, checked like a payload."""
    codec = _codec(cast(Any, kind))
    return cast(T, codec.checked(codec.from_builtins, value))


def _check_version(data: bytes | bytearray | memoryview, what: str) -> None:
    head = bytes(data[:8])
    try:
        _count, start = _map_header(head)
    except ValueError:
        raise WireError(f"{what}: expected a msgpack map") from None
    entry = head[start : start + 3]
    if entry[:2] != b"\xa1v":
        raise WireError(f"{what}: the protocol version is missing (it comes first)")
    if entry != _VERSION_ENTRY:
        raise WireError(f"{what}: unknown protocol version (byte {entry[2:3].hex() or 'none'})")


# -- codecs derived from the model's dataclasses ------------------------------------------------


class _Codec:
    """msgspec decoders for one type, and the check of its fields' rules."""

    def __init__(self, kind: Any) -> None:
        self.what = _describe(kind)
        self.from_msgpack: Callable[[Any], Any] = msgspec.msgpack.Decoder(kind).decode
        self.from_json: Callable[[Any], Any] = msgspec.json.Decoder(kind).decode
        self.from_builtins: Callable[[Any], Any] = partial(msgspec.convert, type=kind)
        self._check = _check_for(kind, PLAIN)

    def checked(self, decoder: Callable[[Any], Any], data: Any) -> Any:
        try:
            value = decoder(data)
        except msgspec.ValidationError as exc:
            raise WireError(f"{self.what}: {_plain(str(exc))}") from None
        except msgspec.DecodeError as exc:
            raise WireError(f"{self.what}: not valid encoded data ({exc})") from None
        except UnicodeDecodeError:
            raise WireError(f"{self.what}: text that is not valid UTF-8") from None
        if self._check is not None:
            try:
                self._check(value)
            except _Invalid as exc:
                raise WireError(
                    f"{self.what}: field {exc.where.lstrip('.')!r} {exc.problem}"
                ) from None
        return value


@cache
def _codec(kind: Any) -> _Codec:
    return _Codec(kind)


def _describe(kind: Any) -> str:
    name = getattr(kind, "__name__", str(kind))
    return "sync state" if kind is DesiredState else re.sub(r"(?<!^)(?=[A-Z])", " ", name).lower()


_KINDS = {"str": "a string", "int": "an integer", "float": "a number", "bool": "a boolean"}
_KINDS |= {"bytes": "binary", "array": "a list", "object": "a map", "null": "null"}
_EXPECTED_RE = re.compile(r"Expected `(.+?)`, got `(\w+)`(?: - at `\$(.*)`)?$")
_MISSING_RE = re.compile(r"Object missing required field `(\w+)`(?: - at `\$(.*)`)?$")


def _plain(message: str) -> str:
    """msgspec's error messages in the words the rest of Daybook uses."""
    if match := _EXPECTED_RE.match(message):
        wanted, got, where = match.groups()
        kind = _KINDS.get(wanted.split(" | ")[0], wanted)
        field = repr(where.lstrip(".")) if where else "the payload"
        return f"{'field ' if where else ''}{field} is not {kind} ({got})"
    if match := _MISSING_RE.match(message):
        name, where = match.groups()
        return f"field {((where or '').lstrip('.') + '.' if where else '') + name!r} is missing"
    return message


# A check takes a decoded value and returns it, or an equal value to keep instead (names
# interned); it raises `_Invalid` saying where inside the value the problem is (a path
# suffix such as "[web].installed") and what it is.
Check = Callable[[Any], Any]


class _Invalid(Exception):
    def __init__(self, where: str, problem: str) -> None:
        super().__init__(problem)
        self.where = where
        self.problem = problem

    def inside(self, outer: str) -> _Invalid:
        return _Invalid(outer + self.where, self.problem)


_INT_RANGE = (0, 2**63 - 1)
_FLOAT_RANGE = (0.0, 1e12)


def _check_for(kind: Any, rule: Rule) -> Check | None:
    """The check of one value of type `kind` under `rule`; None when msgspec's own type
    check is all there is to it."""
    origin, args = get_origin(kind), get_args(kind)
    if origin in (Union, types.UnionType):
        return _optional(kind, args, rule)
    if dataclasses.is_dataclass(kind):
        return _record_check(kind)
    if origin in (tuple, list):
        return _items_check(args[0], rule)
    if origin in (dict, Mapping):
        return _mapping_check(args[1], rule)
    return _scalar_check(kind, rule)


def _optional(kind: Any, args: tuple[Any, ...], rule: Rule) -> Check | None:
    present = [arg for arg in args if arg is not type(None)]
    if len(present) != 1:
        raise TypeError(f"the wire codec takes X | None unions only, not {kind}")
    inner = _check_for(present[0], rule)
    if inner is None:
        return None
    return lambda value: None if value is None else inner(value)


def _scalar_check(kind: Any, rule: Rule) -> Check | None:
    if kind is str:
        return _text_check(rule)
    if kind is bytes:
        return _bytes_check(rule.max_len)
    if kind in (int, float):
        low, high = _INT_RANGE if kind is int else _FLOAT_RANGE
        return _range_check(
            low if rule.minimum is None else rule.minimum,
            high if rule.maximum is None else rule.maximum,
        )
    if kind is bool:
        return None
    raise TypeError(f"the wire codec has no rule for {kind}")


def _bytes_check(limit: int) -> Check:
    def check(value: bytes) -> bytes:
        if len(value) > limit:
            raise _Invalid("", f"is over {limit} bytes")
        return value

    return check


def _range_check(low: float, high: float) -> Check:
    def check(value: float) -> float:
        # NaN fails both comparisons, so it is out of range too.
        if not low <= value <= high:
            raise _Invalid("", f"is out of range ({value})")
        return value

    return check


def _text_check(rule: Rule) -> Check:
    valid, limit, problem = rule.valid, rule.max_len, rule.problem

    def check(text: str) -> str:
        if len(text) <= limit and (valid is None or valid(text)):
            return text
        if len(text) > limit:
            raise _Invalid("", f"is longer than {limit} characters")
        raise _Invalid("", f"{problem} ({text!r:.80})")

    return check


def _items_check(kind: Any, rule: Rule) -> Check | None:
    if kind is str:
        return _names_check(_text_check(rule))
    item = _check_for(kind, rule)
    if item is None:
        return None

    def check(items: Sequence[Any]) -> Sequence[Any]:
        for index, value in enumerate(items):
            try:
                item(value)
            except _Invalid as exc:
                raise exc.inside(f"[{index}]") from None
        return items

    return check


def _names_check(text: Check) -> Check:
    def check(names: tuple[str, ...]) -> tuple[str, ...]:
        for index, name in enumerate(names):
            try:
                text(name)
            except _Invalid as exc:
                raise exc.inside(f"[{index}]") from None
        # Interned: the same few names (versions, services) come back in every report of
        # every host, and the master holds thousands of reports at once.
        return tuple(map(sys.intern, names))

    return check


def _mapping_check(kind: Any, rule: Rule) -> Check | None:
    valid_key = rule.key
    value_check = _check_for(kind, dataclasses.replace(rule, key=None))

    def check(table: dict[str, Any]) -> dict[str, Any]:
        for key, value in table.items():
            if valid_key is not None and not valid_key(key):
                raise _Invalid("", f"has an invalid key {key!r:.80}")
            if value_check is not None:
                try:
                    kept = value_check(value)
                except _Invalid as exc:
                    raise exc.inside(f"[{key}]") from None
                if kept is not value:
                    table[key] = kept  # a fresh dict of msgspec's: ours to change
        return table

    return check


def _record_check(kind: Any) -> Check | None:
    hints = get_type_hints(kind)
    checks = [
        (field.name, check)
        for field in dataclasses.fields(kind)
        if (check := _check_for(hints[field.name], field.metadata.get(RULE_KEY, PLAIN))) is not None
    ]

    def check_record(record: Any) -> Any:
        for name, check in checks:
            value = getattr(record, name)
            try:
                kept = check(value)
            except _Invalid as exc:
                raise exc.inside(f".{name}") from None
            if kept is not value:
                # Frozen, and just decoded: nobody else holds it yet.
                object.__setattr__(record, name, kept)
        return record

    return check_record if checks else None
