"""Rolling syncs driven by the master loop, on inproc sockets: scripted minions answer the
events addressed to them, an operator client waits on the rollout, and an in-memory pin
store records every pin the rollout writes."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import zmq
from master_thread import master_thread

from daybook import wire
from daybook.errors import FleetError, InputError, RegistryError
from daybook.mailbox import Mailbox
from daybook.model.ids import versions_digest
from daybook.model.messages import ControlRequest, Heartbeat, SyncEvent
from daybook.model.pins import Pin
from daybook.model.results import Report, ServiceResult
from daybook.model.rollout import (
    ABORTED,
    COMPLETE,
    FAILED,
    HALTED,
    NO_ANSWER,
    RUNNING,
    Rollout,
)
from daybook.model.state import EncodedState
from daybook.model.sync import Sync
from daybook.net.client import ControlClient
from daybook.net.transport import Peer
from daybook.wire import TOPIC_SYNC, decode_as
from daybook_testing.waiting import wait_for
from master.access import Access
from master.changes import Change, DigestsChanged, Fresh, MappingsChanged
from master.tuning import MasterTuning

HOSTS = tuple(f"m{i}" for i in range(5))


class EveryoneOperates(Access):
    """Who may ask is not what these tests are about: the inproc operator is let in."""

    def __init__(self) -> None:
        super().__init__(None)

    def refusal(self, request: ControlRequest, peer: Peer) -> str | None:
        return None


class MemoryPins:
    """The registry's pins, in memory: every write is kept, in order."""

    def __init__(self, initial: Pin | None = None) -> None:
        self.pins: dict[str, Pin] = {} if initial is None else {initial.service: initial}
        self.writes: list[Pin | None] = []
        # The registry goes away after this many writes (None: never).
        self.fail_after: int | None = None
        self._lock = threading.Lock()

    def update_pin(self, service: str, change: Callable[[Pin | None], Pin | None]) -> Pin | None:
        with self._lock:
            if self.fail_after is not None and len(self.writes) >= self.fail_after:
                raise RegistryError("the registry is down")
            new = change(self.pins.get(service))
            if new is None:
                self.pins.pop(service, None)
            else:
                self.pins[service] = new
            self.writes.append(new)
            return new


@dataclass
class Minions:
    """Scripted minions sharing one SUB and one PUSH socket: they answer each event
    addressed to them once, failing for the hosts in `failing` and staying silent for those
    in `silent`."""

    sub: zmq.Socket[bytes]
    push: zmq.Socket[bytes]
    failing: set[str] = field(default_factory=set)
    silent: set[str] = field(default_factory=set)
    # Per host, the sync ids of the events addressed to it, in order.
    addressed: dict[str, list[str]] = field(default_factory=dict)
    # Per host, the pin of `web` the first event addressed to it carried (None: no pin).
    pinned_when_addressed: dict[str, Pin | None] = field(default_factory=dict)

    def heartbeat(self) -> None:
        for host in HOSTS:
            beat = Heartbeat(host, f"boot-{host}", 1.0, 2.0, 0, 0, None, busy=False)
            self.push.send_multipart(wire.encode(beat))

    def serve(self, stop: threading.Event) -> None:
        while not stop.is_set():
            if self.sub.poll(50):
                self._answer(decode_as(SyncEvent, self.sub.recv_multipart(), max_bytes=1 << 24))

    def _answer(self, event: SyncEvent) -> None:
        if event.hosts is None:
            return  # an automatic sync: not what these tests look at
        state = wire.decode_state(EncodedState(event.state, event.state_digest))
        for host in event.hosts:
            seen = self.addressed.setdefault(host, [])
            if event.sync_id in seen:
                continue  # a republished event: answered already
            seen.append(event.sync_id)
            self.pinned_when_addressed.setdefault(host, state.pins.get("web"))
            if host not in self.silent:
                self.push.send_multipart(wire.encode(report(host, event, host not in self.failing)))


def report(host: str, event: SyncEvent, ok: bool) -> Report:
    result = ServiceResult(present=("1",)) if ok else ServiceResult(failed={"1": "broken"})
    return Report(
        report_id=f"{host}-{event.sync_id}",
        host=host,
        sync_id=event.sync_id,
        epoch=event.epoch,
        seq=event.seq,
        state_digest=event.state_digest,
        pattern="*",
        services={"web": result},
        installed={"web": ("1",)},
        started_at=1.0,
        finished_at=2.0,
    )


@dataclass
class Harness:
    client: ControlClient
    minions: Minions
    pins: MemoryPins
    # When the master asked its (only) watcher for a fresh read.
    refreshes: list[float]


@pytest.fixture
def pins() -> MemoryPins:
    return MemoryPins()


@contextmanager
def master_loop(
    tmp_path: Path,
    sockets: dict[zmq.SocketType, zmq.Socket[bytes]],
    mailbox: Mailbox[Change],
    pins: MemoryPins,
    refreshes: list[float],
) -> Iterator[None]:
    """The master loop on its own thread, as long as the block runs."""

    def refresh() -> None:
        # As the registry watcher does: a fresh read, with the pins as the registry has them.
        refreshes.append(time.monotonic())
        mailbox.post(MappingsChanged({"*": ("web",)}, dict(pins.pins)))
        mailbox.post(Fresh("mappings"))

    with master_thread(
        tmp_path,
        sockets,
        mailbox,
        tuning=MasterTuning(
            startup_grace_s=0.0, quiet_collect_interval_s=0.05, report_collect_interval_s=0.05
        ),
        pins=pins,
        access=EveryoneOperates(),
        # A watcher that answers a refresh at once: operator syncs, and the batches of a
        # rollout carrying a pin, wait for a refresh round.
        refreshers={"mappings": refresh},
    ):
        yield


@pytest.fixture
def harness(
    context: zmq.Context[zmq.Socket[bytes]], tmp_path: Path, pins: MemoryPins
) -> Iterator[Harness]:
    name = tmp_path.name
    sockets = {kind: context.socket(kind) for kind in (zmq.PUB, zmq.PULL, zmq.ROUTER)}
    for kind, socket in sockets.items():
        socket.bind(f"inproc://{name}-{kind}")
    sub = context.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, TOPIC_SYNC)
    sub.connect(f"inproc://{name}-{zmq.PUB}")
    push = context.socket(zmq.PUSH)
    push.connect(f"inproc://{name}-{zmq.PULL}")
    mailbox: Mailbox[Change] = Mailbox()
    minions, minions_stop = Minions(sub, push), threading.Event()
    server = threading.Thread(target=minions.serve, args=(minions_stop,))
    client = ControlClient(f"inproc://{name}-{zmq.ROUTER}", context=context)
    refreshes: list[float] = []
    try:
        with master_loop(tmp_path, sockets, mailbox, pins, refreshes):
            mailbox.post(MappingsChanged({"*": ("web",)}))
            mailbox.post(DigestsChanged({"web": versions_digest(["1"])}))
            minions.heartbeat()
            wait_for(lambda: len(client.fleet_status().hosts) == len(HOSTS), "minions known")
            server.start()
            try:
                yield Harness(client, minions, pins, refreshes)
            finally:
                minions_stop.set()
                server.join()
    finally:
        for socket in (sub, push, *sockets.values()):
            socket.close(linger=0)
        mailbox.close()


def roll(
    harness: Harness,
    *,
    batch: str = "2",
    max_failures: int = 0,
    timeout_s: float = 10.0,
    pin: Pin | None = None,
) -> tuple[Sync, Rollout]:
    """A rolling sync of every host, waited for until it ends."""
    return harness.client.run_rollout(
        None,
        batch=batch,
        max_failures=max_failures,
        batch_wait_s=0.0,
        wait=True,
        timeout_s=timeout_s,
        pin=pin,
    )


def test_every_batch_reaches_its_hosts_only_and_the_rollout_completes(harness: Harness) -> None:
    summary, rollout = roll(harness)
    assert rollout.state == COMPLETE
    assert rollout.batches == (("m0", "m1"), ("m2", "m3"), ("m4",))
    assert len(rollout.batch_syncs) == 3
    # Each host had exactly one event addressed to it: its own batch's.
    for index, batch in enumerate(rollout.batches):
        for host in batch:
            assert harness.minions.addressed[host] == [rollout.batch_syncs[index]]
    assert summary.sync_id == rollout.rollout_id
    assert summary.ok
    assert set(summary.results) == set(HOSTS)
    again = harness.client.rollout_result(rollout.rollout_id)
    assert again[1] == rollout


def test_a_failure_in_the_second_batch_halts_and_the_third_never_starts(
    harness: Harness,
) -> None:
    harness.minions.failing.add("m3")
    summary, rollout = roll(harness)
    assert rollout.state == HALTED
    assert rollout.why is not None
    assert "batch 2 of 3" in rollout.why
    assert rollout.synced == ("m0", "m1", "m2")
    assert dict(rollout.failed) == {"m3": FAILED}
    assert rollout.not_reached == ("m4",)
    assert len(rollout.batch_syncs) == 2
    assert "m4" not in harness.minions.addressed
    assert not summary.ok
    assert summary.missing == ("m4",)
    status = harness.client.fleet_status()
    assert [r.state for r in status.rollouts] == [HALTED]


def test_a_host_that_does_not_answer_counts_as_failed_after_the_timeout(
    harness: Harness,
) -> None:
    harness.minions.silent.add("m1")
    summary, rollout = roll(harness, timeout_s=0.5)
    assert rollout.state == HALTED
    assert dict(rollout.failed) == {"m1": NO_ANSWER}
    assert rollout.not_reached == ("m2", "m3", "m4")
    assert set(summary.silent) == {"m1"}


def test_failures_within_the_allowance_let_the_rollout_complete(harness: Harness) -> None:
    harness.minions.failing.add("m0")
    _summary, rollout = roll(harness, max_failures=1, batch="40%")
    assert rollout.state == COMPLETE
    assert dict(rollout.failed) == {"m0": FAILED}
    assert len(rollout.synced) == 4


def test_an_aborted_rollout_starts_no_further_batch(harness: Harness) -> None:
    summary, rollout = harness.client.start_rollout(
        None, batch="1", batch_wait_s=3600.0, deadline_s=10.0
    )
    assert rollout.state == RUNNING
    wait_for(
        lambda: harness.client.rollout_result(rollout.rollout_id)[1].closed == 1,
        "the first batch to close",
    )
    _summary, aborted = harness.client.abort_rollout(rollout.rollout_id)
    assert aborted.state == ABORTED
    assert aborted.not_reached == HOSTS[1:]
    assert set(harness.minions.addressed) == {"m0"}
    with pytest.raises(InputError, match="aborted already"):
        harness.client.abort_rollout(rollout.rollout_id)
    with pytest.raises(InputError, match="no rolling sync"):
        harness.client.abort_rollout(summary.sync_id[::-1])


def test_a_pin_widens_batch_by_batch_and_reaches_every_host_at_the_end(
    harness: Harness,
) -> None:
    harness.pins.pins["web"] = Pin("web", "1.0")
    _summary, rollout = roll(harness, pin=Pin("web", "2.0"))
    assert rollout.state == COMPLETE
    assert harness.pins.writes == [
        Pin("web", "2.0", previous="1.0", hosts=()),
        Pin("web", "2.0", previous="1.0", hosts=("m0", "m1")),
        Pin("web", "2.0", previous="1.0", hosts=("m0", "m1", "m2", "m3")),
        Pin("web", "2.0", previous="1.0", hosts=HOSTS),
        Pin("web", "2.0", previous="1.0", hosts=None),
    ]
    # One refresh round for the operator's request, and one after each widening, so that
    # each batch goes out with the pin that reaches it: the first batch too.
    assert len(harness.refreshes) == 1 + len(rollout.batches)
    for host in HOSTS:
        pin = harness.minions.pinned_when_addressed[host]
        assert pin is not None
        assert pin.version_for(host) == "2.0", (host, pin)


def test_a_halted_pin_rollout_leaves_unreached_hosts_on_the_previous_version(
    harness: Harness,
) -> None:
    harness.minions.failing.add("m1")
    _summary, rollout = roll(harness, pin=Pin("web", "2.0"))
    assert rollout.state == HALTED
    pin = harness.pins.pins["web"]
    assert pin.hosts == ("m0", "m1")
    assert pin.version_for("m0") == "2.0"
    assert pin.version_for("m4") is None  # no pin before: its newest installed


def test_an_aborted_pin_rollout_puts_the_old_pin_back(harness: Harness) -> None:
    harness.pins.pins["web"] = Pin("web", "1.0")
    _summary, rollout = harness.client.start_rollout(
        None, batch="1", batch_wait_s=3600.0, deadline_s=10.0, pin=Pin("web", "2.0")
    )
    harness.client.abort_rollout(rollout.rollout_id)
    assert harness.pins.pins["web"] == Pin("web", "1.0")


def test_a_pin_that_cannot_be_widened_halts_the_rollout_before_its_batch(
    harness: Harness,
) -> None:
    harness.pins.fail_after = 2  # the claim and the first batch's widening, then no more
    _summary, rollout = roll(harness, pin=Pin("web", "2.0"))
    assert rollout.state == HALTED
    assert rollout.why == "the pin of web could not be stored: the registry is down"
    assert len(rollout.batch_syncs) == 1
    assert set(harness.minions.addressed) == {"m0", "m1"}
    assert rollout.not_reached == ("m2", "m3", "m4")
    # The master goes on serving.
    assert harness.client.fleet_status().rollouts == (rollout,)


def test_a_pin_the_registry_refuses_starts_no_rollout(harness: Harness) -> None:
    harness.pins.fail_after = 0
    with pytest.raises(FleetError, match="the registry is down"):
        roll(harness, pin=Pin("web", "2.0"))
    assert harness.minions.addressed == {}
