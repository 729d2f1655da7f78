"""Rolling syncs as pure values: batch sizes, batches, and how a rollout halts."""

from __future__ import annotations

from dataclasses import replace

import msgspec
import pytest
from messages import report

from daybook import wire
from daybook.errors import InputError, WireError
from daybook.model.messages import ControlReply, ControlRequest, SyncEvent
from daybook.model.pins import Pin
from daybook.model.rollout import (
    ABORTED,
    COMPLETE,
    FAILED,
    HALTED,
    NO_ANSWER,
    RUNNING,
    BatchSize,
    Rollout,
    parse_batch_size,
    rollout_summary,
    split_batches,
    start_rollout,
)
from daybook.model.state import DesiredState
from daybook.model.sync import Sync

TEN = tuple(f"m{i:02d}" for i in range(10))


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("3", BatchSize(count=3)),
        ("1", BatchSize(count=1)),
        ("30%", BatchSize(percent=30)),
        ("100%", BatchSize(percent=100)),
        (" 7 ", BatchSize(count=7)),
    ],
)
def test_batch_sizes_parse(text: str, size: BatchSize) -> None:
    assert parse_batch_size(text) == size


@pytest.mark.parametrize(
    "text", ["0", "0%", "-1", "-10%", "101%", "3.5", "abc", "", "%", "3%%", "1000000", "30 %"]
)
def test_bad_batch_sizes_are_refused_as_input(text: str) -> None:
    with pytest.raises(InputError):
        parse_batch_size(text)


@pytest.mark.parametrize(
    ("size", "hosts", "batches"),
    [
        ("3", TEN, [3, 3, 3, 1]),
        ("10", TEN, [10]),
        ("25", TEN, [10]),
        ("30%", TEN, [3, 3, 3, 1]),
        ("25%", TEN, [3, 3, 3, 1]),  # 2.5 rounds up
        ("1%", TEN, [1] * 10),  # at least one host per batch
        ("100%", TEN, [10]),
        ("3", (), []),
    ],
)
def test_split_batches(size: str, hosts: tuple[str, ...], batches: list[int]) -> None:
    split = split_batches(hosts, parse_batch_size(size))
    assert [len(batch) for batch in split] == batches
    assert [host for batch in split for host in batch] == sorted(hosts)


def test_hosts_go_in_name_order_once_each() -> None:
    assert split_batches(["c", "a", "b", "a"], BatchSize(count=2)) == (("a", "b"), ("c",))


def rollout(max_failures: int = 0, batch_wait_s: float = 0.0, size: str = "3") -> Rollout:
    return start_rollout(
        rollout_id="r1",
        target="*",
        hosts=TEN,
        size=parse_batch_size(size),
        max_failures=max_failures,
        batch_wait_s=batch_wait_s,
        batch_timeout_s=5.0,
        now=100.0,
    )


def run_batch(
    current: Rollout,
    number: int,
    *,
    failing: frozenset[str] = frozenset(),
    silent: frozenset[str] = frozenset(),
) -> Rollout:
    """Start the next batch and close it: `failing` hosts answer failed, `silent` ones not."""
    batch = current.next_batch(now=1e9)
    assert batch is not None
    current = current.with_batch_started(f"b{number}")
    results = {
        host: report(host, f"b{number}", ok=host not in failing)
        for host in batch
        if host not in silent
    }
    return current.with_batch_result(results, now=200.0 + number)


# Each case: max failures; per batch, the failing and silent hosts; the state after each
# batch the rollout runs; the failures it ends with.
CASES = [
    ("all ok", 0, [((), ())] * 4, [RUNNING, RUNNING, RUNNING, COMPLETE], {}),
    (
        "a failure in batch 2 halts at once",
        0,
        [((), ()), (("m04",), ())],
        [RUNNING, HALTED],
        {"m04": FAILED},
    ),
    (
        "a silent host is a failure",
        0,
        [((), ("m01",))],
        [HALTED],
        {"m01": NO_ANSWER},
    ),
    (
        "failures add up across batches",
        1,
        [(("m00",), ()), ((), ()), ((), ("m07",))],
        [RUNNING, RUNNING, HALTED],
        {"m00": FAILED, "m07": NO_ANSWER},
    ),
    (
        "failures within the allowance complete",
        2,
        [(("m00",), ()), ((), ()), ((), ("m07",)), ((), ())],
        [RUNNING, RUNNING, RUNNING, COMPLETE],
        {"m00": FAILED, "m07": NO_ANSWER},
    ),
    (
        "two failures in one batch over an allowance of one",
        1,
        [(("m00", "m02"), ())],
        [HALTED],
        {"m00": FAILED, "m02": FAILED},
    ),
]


@pytest.mark.parametrize(
    ("max_failures", "batches", "states", "failed"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_rollout_transitions(
    max_failures: int,
    batches: list[tuple[tuple[str, ...], tuple[str, ...]]],
    states: list[str],
    failed: dict[str, str],
) -> None:
    current = rollout(max_failures)
    seen = []
    for number, (failing, silent) in enumerate(batches, start=1):
        current = run_batch(current, number, failing=frozenset(failing), silent=frozenset(silent))
        seen.append(current.state)
    assert seen == states
    assert dict(current.failed) == failed
    reached = set(current.reached)
    assert set(current.synced) == reached - set(failed)
    assert set(current.not_reached) == set(TEN) - reached
    if current.state == HALTED:
        assert current.why is not None
        assert f"batch {len(batches)} of 4" in current.why
        assert current.next_batch(now=1e9) is None
        assert current.next_batch_due() is None
        with pytest.raises(ValueError, match="halted"):
            current.with_batch_started("b9")


def test_a_halted_rollout_names_synced_failed_and_unreached() -> None:
    current = run_batch(run_batch(rollout(), 1), 2, failing=frozenset({"m04"}))
    assert current.halted
    assert current.synced == ("m00", "m01", "m02", "m03", "m05")
    assert dict(current.failed) == {"m04": FAILED}
    assert current.not_reached == ("m06", "m07", "m08", "m09")
    assert current.batch_syncs == ("b1", "b2")


def test_the_next_batch_waits_for_the_batch_wait() -> None:
    current = rollout(batch_wait_s=30.0)
    assert current.next_batch(now=100.0) == ("m00", "m01", "m02")
    assert current.next_batch_due() == 100.0
    current = current.with_batch_started("b1")
    assert current.running_batch == 0
    assert current.next_batch(now=1e9) is None  # one at a time
    with pytest.raises(ValueError, match="still running"):
        current.with_batch_started("b2")
    current = current.with_batch_result({h: report(h, "b1") for h in TEN[:3]}, now=200.0)
    assert current.next_batch_due() == 230.0
    assert current.next_batch(now=229.9) is None
    assert current.next_batch(now=230.0) == ("m03", "m04", "m05")


def test_an_aborted_rollout_starts_no_batch() -> None:
    current = rollout().with_batch_started("b1").aborted(now=150.0)
    assert current.state == ABORTED
    assert current.next_batch(now=1e9) is None
    with pytest.raises(ValueError, match="aborted"):
        current.with_batch_started("b2")
    with pytest.raises(ValueError, match="aborted already"):
        current.aborted(now=151.0)


def test_a_rollout_of_no_host_is_complete_at_once() -> None:
    empty = start_rollout(
        rollout_id="r1",
        target="web-*",
        hosts=(),
        size=BatchSize(count=3),
        max_failures=0,
        batch_wait_s=0.0,
        batch_timeout_s=5.0,
        now=1.0,
    )
    assert empty.state == COMPLETE
    assert empty.next_batch(now=2.0) is None


def test_the_summary_is_a_sync_under_the_rollout_id() -> None:
    current = rollout().with_batch_started("b1")
    batch = Sync(
        "b1",
        "*",
        "operator",
        101.0,
        ("m00", "m01", "m02"),
        results={"m00": report("m00", "b1"), "m01": report("m01", "b1", ok=False)},
        closed_at=110.0,
        silent={"m02": None},
    )
    current = current.with_batch_result(batch.results, now=110.0)
    summary = rollout_summary(current, [batch])
    assert summary.sync_id == "r1"
    assert summary.expected == TEN
    assert set(summary.results) == {"m00", "m01"}
    assert dict(summary.silent) == {"m02": None}
    assert summary.missing == ("m02", *TEN[3:])
    assert summary.closed_at == 110.0
    assert not summary.ok


def test_a_rollout_travels_on_the_wire() -> None:
    pin = Pin("web", "1.2", previous="1.1", hosts=("m00",))
    current = replace(run_batch(rollout(), 1, silent=frozenset({"m02"})), pin=pin)
    reply = ControlReply("q1", rollout=current)
    back = wire.decode_frames(wire.encode(reply))
    assert back == reply


def test_rolling_requests_are_checked_on_the_wire() -> None:
    good = ControlRequest("q1", "sync", batch="30%", max_failures=2, batch_wait_s=5.0)
    assert wire.decode_frames(wire.encode(good)) == good
    for bad in ({"batch": "0"}, {"batch": "101%"}, {"max_failures": -1}, {"batch_wait_s": -1.0}):
        body = msgspec.msgpack.decode(wire.payload(good)) | bad
        with pytest.raises(WireError):
            wire.decode(ControlRequest, msgspec.msgpack.encode(body))
    with pytest.raises(ValueError, match="needs a sync_id"):
        ControlRequest("q2", "sync.abort")
    with pytest.raises(ValueError, match="rolling sync"):
        ControlRequest("q3", "sync", pin=Pin("web", "1.0"))


def test_an_event_from_an_older_master_addresses_every_matching_host() -> None:
    state = wire.encode_state(DesiredState({"*": ("web",)}, {}))
    event = SyncEvent.carrying(state, epoch=1, seq=1, sync_id="s1", target="*", issued_at=1.0)
    body = msgspec.msgpack.decode(wire.payload(event))
    del body["hosts"]
    decoded = wire.decode(SyncEvent, msgspec.msgpack.encode(body))
    assert decoded.hosts is None
    assert decoded.addresses("anyone")
    assert not replace(decoded, hosts=("a",)).addresses("b")
    assert replace(decoded, hosts=("Web-1",)).addresses("web-1")


def test_a_rollout_stopped_for_its_own_reason_is_halted_for_good() -> None:
    current = rollout().stopped("the pin of web could not be stored", now=150.0)
    assert current.halted
    assert current.why == "the pin of web could not be stored"
    assert current.next_batch(now=1e9) is None
    with pytest.raises(ValueError, match="halted already"):
        current.stopped("again", now=151.0)
