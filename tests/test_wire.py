"""The wire format: round trips, every malformed case, and fuzzing that only WireError escapes."""

from __future__ import annotations

import contextlib
import math
import zlib
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from daybook import wire
from daybook.errors import WireError
from daybook.model.fleet import FleetStatus, HostStatus
from daybook.model.ids import EMPTY_DIGEST, blob_digest, is_valid_digest, versions_digest
from daybook.model.messages import ControlReply, ControlRequest, Heartbeat, SyncEvent
from daybook.model.results import Report, ServiceResult
from daybook.model.state import DesiredState, EncodedState
from daybook.model.sync import Sync
from daybook.wire import (
    PROTOCOL_VERSION,
    TOPIC_HEARTBEAT,
    TOPIC_REPLY,
    TOPIC_REPORT,
    TOPIC_REQUEST,
    TOPIC_SYNC,
    decode_as,
    decode_frames,
)
from master.heap import MMAP_THRESHOLD_BYTES

DIGEST = versions_digest(["1", "2"])


def make_state() -> DesiredState:
    return DesiredState(
        mappings={"web-*": ("web", "api"), "db-1.prod": ("db",), "*": ("base",)},
        digests={"web": DIGEST, "api": versions_digest(["7"]), "db": EMPTY_DIGEST},
    )


def make_event(**changes: Any) -> SyncEvent:
    fields: dict[str, Any] = {
        "epoch": 1_700_000_000_000,
        "seq": 3,
        "sync_id": "a" * 32,
        "target": "web-*",
        "state": wire.encode_state(make_state()),
        "issued_at": 1_700_000_000.5,
    }
    fields.update(changes)
    return SyncEvent.carrying(fields.pop("state"), **fields)


def make_report(**changes: Any) -> Report:
    fields: dict[str, Any] = {
        "report_id": "r" * 32,
        "host": "web-1.example.com",
        "sync_id": "a" * 32,
        "epoch": 1,
        "seq": 3,
        "state_digest": DIGEST,
        "pattern": "web-*",
        "services": {
            "web": ServiceResult(installed=("2",), present=("1",)),
            "api": ServiceResult(failed={"7": "archive is corrupt"}),
            "db": ServiceResult(error="cannot list the store"),
        },
        "installed": {"web": ("1", "2"), "api": (), "db": ()},
        "started_at": 10.0,
        "finished_at": 10.25,
    }
    fields.update(changes)
    return Report(**fields)


def make_heartbeat(**changes: Any) -> Heartbeat:
    fields: dict[str, Any] = {
        "host": "web-1",
        "boot_id": "b" * 32,
        "started_at": 5.0,
        "sent_at": 6.0,
        "epoch": 2,
        "seq": 9,
        "state_digest": DIGEST,
        "busy": True,
    }
    fields.update(changes)
    return Heartbeat(**fields)


def payload_of(message: Any) -> dict[str, Any]:
    _topic, payload = wire.encode(message)
    decoded: dict[str, Any] = msgpack.unpackb(payload, raw=False)
    return decoded


def repack(topic: bytes, fields: dict[str, Any]) -> list[bytes]:
    return [topic, msgpack.packb(fields, use_bin_type=True)]


# -- round trips ------------------------------------------------------------------------------


def test_desired_state_round_trip_and_digest_is_canonical() -> None:
    state = make_state()
    encoded = wire.encode_state(state)
    assert wire.decode_state(encoded) == state
    reordered = DesiredState(
        mappings=dict(reversed(list(state.mappings.items()))),
        digests=dict(reversed(list(state.digests.items()))),
    )
    assert wire.encode_state(reordered) == encoded


def test_desired_state_keeps_service_order_within_a_pattern() -> None:
    state = DesiredState({"h": ("b", "a")}, {})
    assert wire.decode_state(wire.encode_state(state)).mappings["h"] == ("b", "a")
    assert wire.encode_state(state) != wire.encode_state(DesiredState({"h": ("a", "b")}, {}))


@pytest.mark.parametrize(
    "message",
    [
        make_event(),
        make_report(),
        make_report(pattern=None, services={}, installed={}, error="install lock is held"),
        make_heartbeat(),
        make_heartbeat(state_digest=None, epoch=0, seq=0, busy=False),
        ControlRequest("q1", "sync", target="web-*", wait_s=2.5),
        ControlRequest("q2", "status"),
        ControlRequest("q3", "sync_result", sync_id="a" * 32),
        ControlReply("q4", error="refused"),
    ],
    ids=lambda m: type(m).__name__,
)
def test_round_trip(message: Any) -> None:
    frames = wire.encode(message)
    assert frames[0] == wire.TOPICS[type(message)]
    assert decode_frames(frames) == message
    assert decode_as(type(message), frames, max_bytes=wire.MAX_FRAME_BYTES) == message


def test_control_reply_with_sync_summary_and_status_round_trips() -> None:
    report = make_report()
    summary = Sync(
        sync_id="a" * 32,
        target="*",
        origin="operator",
        issued_at=1.0,
        expected=("web-1.example.com", "web-2"),
        results={"web-1.example.com": report},
    )
    status = FleetStatus(
        epoch=4,
        now=100.0,
        hosts={
            "web-1.example.com": HostStatus(
                "web-1.example.com", True, 99.0, "b" * 32, 50.0, report
            ),
            "web-2": HostStatus("web-2", False, 10.0, None, None, None),
        },
    )
    reply = ControlReply("q", sync=summary, status=status)
    decoded = decode_as(ControlReply, wire.encode(reply), max_bytes=wire.MAX_FRAME_BYTES)
    assert decoded == reply
    assert decoded.sync is not None
    assert decoded.sync.missing == ("web-2",)
    assert not decoded.sync.complete
    assert not decoded.sync.ok


def test_report_ok_is_derived_from_its_services() -> None:
    assert not make_report().ok
    fine = make_report(services={"web": ServiceResult(present=("1",))})
    assert fine.ok
    assert not make_report(services={}, error="boom").ok
    assert fine.duration_s == pytest.approx(0.25)


def test_versions_digest_is_order_and_duplicate_independent() -> None:
    assert versions_digest(["2", "1", "1"]) == versions_digest(["1", "2"])
    assert versions_digest(["1"]) != versions_digest(["1", "2"])
    assert versions_digest([]) == EMPTY_DIGEST
    assert is_valid_digest(EMPTY_DIGEST)
    assert versions_digest(["1.10"]) != versions_digest(["1.1", "0"])


def test_a_sync_event_for_1000_patterns_and_100_services_stays_small() -> None:
    services = [f"service_{i:03d}" for i in range(100)]
    mappings = {
        f"web-{i:04d}-*.dc{i % 5}.example.com": tuple(services[(i * 7 + k) % 100] for k in range(3))
        for i in range(1000)
    }
    digests = {
        s: versions_digest([f"1.{j}" for j in range(i % 20 + 1)]) for i, s in enumerate(services)
    }
    event = make_event(state=wire.encode_state(DesiredState(mappings, digests)))
    size = sum(len(frame) for frame in wire.encode(event))
    assert size <= 32 * 1024
    assert decode_as(SyncEvent, wire.encode(event), max_bytes=wire.MAX_FRAME_BYTES) == event


def test_a_long_payload_travels_in_frames_under_the_masters_mmap_threshold() -> None:
    blob = bytes(range(256)) * 90
    event = make_event(state=EncodedState(blob, blob_digest(blob)))
    topic, *parts = wire.encode(event)
    assert topic == TOPIC_SYNC
    assert len(parts) == 4
    assert all(len(part) == wire.PAYLOAD_FRAME_BYTES for part in parts[:-1])
    assert b"".join(parts) == wire.payload(event)
    assert decode_frames([topic, *parts]) == event
    # libzmq encrypts each frame in buffers of its size plus CURVE's 33-byte box and
    # 16-byte tag, and glibc adds its own header: all under the threshold.
    assert wire.PAYLOAD_FRAME_BYTES + 33 + 16 + 64 < MMAP_THRESHOLD_BYTES
    # A short payload stays in one frame: what earlier versions sent.
    assert len(wire.encode(make_event())) == 2


def test_a_long_report_is_kept_whole() -> None:
    versions = tuple(f"1.0.{i}" for i in range(2000))
    report = make_report(installed={"web": versions})
    frames = wire.encode(report)
    assert len(frames) > 2
    assert decode_frames(frames, max_bytes=wire.MAX_MESSAGE_BYTES) == report
    assert wire.joined_payload(frames) == wire.payload(report)
    assert wire.joined_payload(wire.encode(make_heartbeat())) == wire.payload(make_heartbeat())


def test_payload_frames_are_checked() -> None:
    blob = b"s" * wire.PAYLOAD_FRAME_BYTES
    frames = wire.encode(make_event(state=EncodedState(blob, blob_digest(blob))))
    assert len(frames) == 3
    with pytest.raises(WireError, match="an empty payload frame"):
        decode_frames([*frames, b""])
    with pytest.raises(WireError, match="exceeds"):
        decode_frames(frames, max_bytes=len(blob))
    with pytest.raises(WireError, match="expected a msgpack map"):
        decode_frames([frames[0], frames[2], frames[1]])


def test_unknown_fields_are_ignored_for_forward_compatibility() -> None:
    fields = payload_of(make_heartbeat())
    fields["future_field"] = [1, 2, 3]
    assert decode_frames(repack(TOPIC_HEARTBEAT, fields)) == make_heartbeat()


# -- malformed frames -------------------------------------------------------------------------


def test_frame_count_topic_and_size_are_checked() -> None:
    frames = wire.encode(make_heartbeat())
    with pytest.raises(WireError, match="2 frames"):
        decode_frames(frames[:1])
    with pytest.raises(WireError, match="an empty payload frame"):
        decode_frames([*frames, b""])
    with pytest.raises(WireError, match="unknown topic"):
        decode_frames([b"bogus", frames[1]])
    with pytest.raises(WireError, match="exceeds"):
        decode_frames(frames, max_bytes=len(frames[1]) - 1)


def test_a_message_of_the_wrong_kind_is_refused() -> None:
    with pytest.raises(WireError, match="unexpected Heartbeat"):
        decode_as(Report, wire.encode(make_heartbeat()), max_bytes=wire.MAX_FRAME_BYTES)


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"\xc1",  # a byte msgpack never uses
        b"\x92\x01",  # truncated array
        msgpack.packb({"v": 1}) + b"\x00",  # trailing data
        msgpack.packb([1, 2, 3]),
        msgpack.packb("text"),
        msgpack.packb({1: "int key"}),
        msgpack.packb({"v": 1, "nested": {b"bytes key": 1}}),
        msgpack.packb(msgpack.ExtType(5, b"x")),
        b"\xff" * 64,
        b"\x91" * 100_000,  # deep nesting
    ],
)
def test_payloads_that_are_not_valid_msgpack_maps_are_refused(payload: bytes) -> None:
    for topic in (TOPIC_SYNC, TOPIC_REPORT, TOPIC_HEARTBEAT, TOPIC_REQUEST, TOPIC_REPLY):
        with pytest.raises(WireError):
            decode_frames([topic, payload])


def test_invalid_utf8_text_is_refused() -> None:
    fields = payload_of(make_heartbeat())
    raw = msgpack.packb({**fields, "host": "HOSTX"}, use_bin_type=True)
    broken = raw.replace(b"HOSTX", b"\xff\xfe\xfd\xfc\xfb")
    with pytest.raises(WireError):
        decode_frames([TOPIC_HEARTBEAT, broken])


@pytest.mark.parametrize("version", [None, 0, 2, "1", 1.0, True, -1])
def test_unknown_or_missing_protocol_versions_are_refused(version: object) -> None:
    fields = payload_of(make_heartbeat())
    if version is None:
        del fields["v"]
    else:
        fields["v"] = version
    with pytest.raises(WireError):
        decode_frames(repack(TOPIC_HEARTBEAT, fields))
    assert PROTOCOL_VERSION == 1


HEARTBEAT_BAD_FIELDS: list[tuple[str, object]] = [
    ("host", None),
    ("host", 5),
    ("host", "../etc"),
    ("host", "a b"),
    ("host", "x" * 300),
    ("host", b"web-1"),
    ("boot_id", "has space"),
    ("boot_id", "x" * 65),
    ("started_at", "now"),
    ("started_at", math.nan),
    ("started_at", math.inf),
    ("started_at", -1.0),
    ("started_at", True),
    ("epoch", 1.5),
    ("epoch", -1),
    ("epoch", True),
    ("epoch", 2**64 - 1),
    ("seq", "3"),
    ("state_digest", "abc"),
    ("state_digest", "G" * 32),
    ("busy", 1),
    ("busy", None),
]


@pytest.mark.parametrize(("key", "value"), HEARTBEAT_BAD_FIELDS)
def test_heartbeat_fields_are_type_and_name_checked(key: str, value: object) -> None:
    fields = payload_of(make_heartbeat())
    fields[key] = value
    with pytest.raises(WireError):
        decode_frames(repack(TOPIC_HEARTBEAT, fields))


@pytest.mark.parametrize("key", ["host", "boot_id", "started_at", "sent_at", "epoch", "busy"])
def test_missing_required_fields_are_refused(key: str) -> None:
    fields = payload_of(make_heartbeat())
    del fields[key]
    with pytest.raises(WireError, match="missing"):
        decode_frames(repack(TOPIC_HEARTBEAT, fields))


REPORT_BAD_FIELDS: list[tuple[str, object]] = [
    ("services", []),
    ("services", {"bad name!": {"installed": [], "present": [], "failed": {}}}),
    ("services", {"web": {"installed": ["../x"], "present": [], "failed": {}}}),
    ("services", {"web": {"installed": [".hidden"], "present": [], "failed": {}}}),
    ("services", {"web": {"installed": [], "present": [], "failed": {"1": 5}}}),
    ("services", {"web": {"installed": [], "present": [], "failed": {"1": "x" * 5000}}}),
    ("services", {"web": {"installed": "1", "present": [], "failed": {}}}),
    ("services", {"web": "ok"}),
    ("installed", {"web": ["1", None]}),
    ("installed", {"web/..": ["1"]}),
    ("pattern", "web-?"),
    ("pattern", "a/b"),
    ("report_id", ""),
    ("sync_id", "../../x"),
    ("error", 42),
    ("finished_at", 1e13),
]


@pytest.mark.parametrize(("key", "value"), REPORT_BAD_FIELDS)
def test_report_fields_are_type_and_name_checked(key: str, value: object) -> None:
    fields = payload_of(make_report())
    fields[key] = value
    with pytest.raises(WireError):
        decode_frames(repack(TOPIC_REPORT, fields))


def test_sync_event_state_must_match_its_digest() -> None:
    fields = payload_of(make_event())
    fields["state_digest"] = EMPTY_DIGEST
    with pytest.raises(WireError, match="digest"):
        decode_frames(repack(TOPIC_SYNC, fields))


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("target", "web-[1]"),
        ("target", ""),
        ("state", "text"),
        ("seq", -3),
        ("sync_id", None),
        ("heartbeat_s", -1.0),
        ("heartbeat_s", 86400.0),
        ("heartbeat_s", math.nan),
        ("heartbeat_s", "5"),
    ],
)
def test_sync_event_fields_are_checked(key: str, value: object) -> None:
    fields = payload_of(make_event())
    fields[key] = value
    with pytest.raises(WireError):
        decode_frames(repack(TOPIC_SYNC, fields))


def test_an_event_from_a_master_that_paces_nothing_leaves_the_pace_unset() -> None:
    paced = make_event(heartbeat_s=18.0)
    assert decode_frames(wire.encode(paced)) == paced
    fields = payload_of(paced)
    del fields["heartbeat_s"]
    decoded = decode_frames(repack(TOPIC_SYNC, fields))
    assert isinstance(decoded, SyncEvent)
    assert decoded.heartbeat_s is None


def state_event(document: object, *, raw: bytes | None = None) -> list[bytes]:
    """A sync event around a hand-made state, with a correct digest (so only content fails)."""
    blob = zlib.compress(raw if raw is not None else msgpack.packb(document, use_bin_type=True))
    state = EncodedState(blob, blob_digest(blob))
    return wire.encode(make_event(state=state))


@pytest.mark.parametrize(
    "document",
    [
        {"v": 1, "mappings": {"web-*": ["web"]}},  # no digests
        {"v": 2, "mappings": {}, "digests": {}},
        {"v": 1, "mappings": {"../etc": ["web"]}, "digests": {}},
        {"v": 1, "mappings": {"web-?": ["web"]}, "digests": {}},
        {"v": 1, "mappings": {"web-*": ["we b"]}, "digests": {}},
        {"v": 1, "mappings": {"web-*": "web"}, "digests": {}},
        {"v": 1, "mappings": {"web-*": [1]}, "digests": {}},
        {"v": 1, "mappings": {}, "digests": {"web": "short"}},
        {"v": 1, "mappings": {}, "digests": {"a/b": EMPTY_DIGEST}},
        [1, 2],
    ],
)
def test_the_state_inside_an_event_is_validated_on_decode(document: object) -> None:
    event = decode_as(SyncEvent, state_event(document), max_bytes=wire.MAX_FRAME_BYTES)
    with pytest.raises(WireError):
        wire.decode_state(event.encoded_state)


def test_a_state_that_is_not_zlib_or_truncated_is_refused() -> None:
    blob = zlib.compress(msgpack.packb({"v": 1, "mappings": {}, "digests": {}}))
    for bad in (b"not zlib", blob[:-4]):
        with pytest.raises(WireError):
            wire.decode_state(EncodedState(bad, blob_digest(bad)))


def test_a_decompression_bomb_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(wire, "MAX_STATE_BYTES", 1024 * 1024)
    bomb = zlib.compress(b"\0" * (4 * 1024 * 1024), 9)
    assert len(bomb) < 10_000
    with pytest.raises(WireError, match="larger than"):
        wire.decode_state(EncodedState(bomb, blob_digest(bomb)))


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"op": "shell"}, "unknown operation"),
        ({"op": "keys_delete"}, "unknown operation"),
        ({"op": 5}, "not a string"),
        ({"op": "sync_result", "sync_id": None}, "needs a sync_id"),
        ({"target": "*; rm -rf /"}, "not valid"),
        ({"wait_s": -1}, "out of range"),
        ({"wait_s": 1e9}, "out of range"),
        ({"request_id": "x" * 100}, "not valid"),
    ],
)
def test_control_requests_are_allow_listed_and_checked(
    changes: dict[str, object], problem: str
) -> None:
    fields = payload_of(ControlRequest("q1", "sync", target="web-*"))
    fields.update(changes)
    with pytest.raises(WireError, match=problem):
        decode_frames(repack(TOPIC_REQUEST, fields))


def test_a_request_that_fails_to_decode_still_gives_its_id() -> None:
    fields = payload_of(ControlRequest("q1", "sync", deadline_s=90_000.0))
    with pytest.raises(WireError, match="deadline_s"):
        decode_frames(repack(TOPIC_REQUEST, fields))
    assert wire.request_id_of(repack(TOPIC_REQUEST, fields), max_bytes=1024) == "q1"
    # Split over frames, as a long request is sent.
    topic, payload = repack(TOPIC_REQUEST, fields)
    assert wire.request_id_of([topic, payload[:5], payload[5:]], max_bytes=1024) == "q1"


@pytest.mark.parametrize(
    "frames",
    [
        [TOPIC_REQUEST],
        [TOPIC_REPORT, msgpack.packb({"v": 1, "request_id": "q1"})],
        [TOPIC_REQUEST, b"\xc1"],
        [TOPIC_REQUEST, msgpack.packb(["q1"])],
        [TOPIC_REQUEST, msgpack.packb({"v": 1, "op": "sync"})],
        [TOPIC_REQUEST, msgpack.packb({"v": 1, "request_id": 7})],
        [TOPIC_REQUEST, msgpack.packb({"v": 1, "request_id": "../etc"})],
        [TOPIC_REQUEST, msgpack.packb({"v": 1, "request_id": "q1", "pad": "x" * 2000})],
    ],
    ids=["no payload", "a report", "no msgpack", "no map", "no id", "an int", "bad id", "long"],
)
def test_a_request_with_no_readable_id_gives_none(frames: list[bytes]) -> None:
    assert wire.request_id_of(frames, max_bytes=1024) is None


def test_control_reply_nested_reports_are_validated() -> None:
    summary = Sync("a" * 32, "*", "operator", 1.0, ("web-1",), {})
    fields = payload_of(ControlReply("q", sync=summary))
    fields["sync"]["results"] = {"web-1": {"host": "web-1"}}
    with pytest.raises(WireError):
        decode_frames(repack(TOPIC_REPLY, fields))
    fields["sync"]["results"] = {}
    fields["sync"]["origin"] = "mystery"
    with pytest.raises(WireError, match="origin"):
        decode_frames(repack(TOPIC_REPLY, fields))


# -- fuzzing ----------------------------------------------------------------------------------

TOPICS = st.sampled_from([TOPIC_SYNC, TOPIC_REPORT, TOPIC_HEARTBEAT, TOPIC_REQUEST, TOPIC_REPLY])
FIELD_NAMES = sorted(
    set(payload_of(make_event()))
    | set(payload_of(make_report()))
    | set(payload_of(make_heartbeat()))
    | set(payload_of(ControlRequest("q", "sync")))
    | {"sync", "status", "results", "hosts", "expected", "mappings", "digests"}
)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
    | st.binary(max_size=20)
    | st.sampled_from(["web-1", "*", "1.0", DIGEST, "a" * 32, "sync", "status"])
)
KEYS = st.sampled_from(FIELD_NAMES) | st.text(max_size=8)
STRUCTURES = st.recursive(
    SCALARS,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(KEYS, children, max_size=6),
    max_leaves=30,
)


def decode_or_wire_error(frames: list[bytes]) -> None:
    try:
        message = decode_frames(frames)
    except WireError:
        return
    if isinstance(message, SyncEvent):
        try:
            wire.decode_state(message.encoded_state)
        except WireError:
            return


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(topic=TOPICS, payload=st.binary(max_size=256))
def test_fuzz_random_bytes_raise_only_wire_errors(topic: bytes, payload: bytes) -> None:
    decode_or_wire_error([topic, payload])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(topic=TOPICS, structure=STRUCTURES)
def test_fuzz_random_msgpack_structures_raise_only_wire_errors(
    topic: bytes, structure: object
) -> None:
    decode_or_wire_error([topic, msgpack.packb(structure, use_bin_type=True)])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_fuzz_valid_messages_with_one_field_replaced(data: st.DataObject) -> None:
    message = data.draw(
        st.sampled_from(
            [
                make_event(),
                make_report(),
                make_heartbeat(),
                ControlRequest("q", "sync_result", sync_id="s"),
                ControlReply("q", sync=Sync("s", "*", "auto", 1.0, ("h",), {})),
            ]
        )
    )
    fields = payload_of(message)
    key = data.draw(st.sampled_from(sorted(fields)))
    fields[key] = data.draw(STRUCTURES)
    decode_or_wire_error(repack(wire.TOPICS[type(message)], fields))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(structure=STRUCTURES)
def test_fuzz_random_states_raise_only_wire_errors(structure: object) -> None:
    event = decode_as(SyncEvent, state_event(structure), max_bytes=wire.MAX_FRAME_BYTES)
    with contextlib.suppress(WireError):
        wire.decode_state(event.encoded_state)


def test_decoded_names_are_shared_between_messages() -> None:
    # The master holds thousands of reports naming the same few versions: one copy each.
    version = "2024.11.3"
    payloads = [
        wire.encode(
            make_report(
                host=f"web-{i}",
                services={"web": ServiceResult(present=(version,))},
                installed={"web": (version,)},
            )
        )[1]
        for i in range(2)
    ]
    first, second = (wire.decode(Report, payload) for payload in payloads)
    assert first.installed["web"][0] is second.installed["web"][0]
    assert first.services["web"].present[0] is second.services["web"].present[0]
