"""A minion's socket side: targets, sequence gaps, master restarts, reporting once."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import zmq
from messages import report

from daybook import wire
from daybook.mailbox import Mailbox
from daybook.model.ids import versions_digest
from daybook.model.messages import Heartbeat, SyncEvent
from daybook.model.results import Report
from daybook.model.state import DesiredState
from daybook.wire import decode_frames
from minion.memory import STATE_FILE, AppliedService, MinionMemory
from minion.minion import LoopTask, Minion
from minion.reporter import Reporter
from minion.subscriber import EventSubscriber
from minion.sync import PendingSync, Synced

STATE = wire.encode_state(DesiredState({"web-*": ("web",)}, {}))


class FakeSocket:
    """Stands in for a zmq socket: frames to receive, and frames sent."""

    def __init__(self) -> None:
        self.inbox: list[list[bytes]] = []
        self.sent: list[list[bytes]] = []

    def recv_multipart(self, flags: int = 0) -> list[bytes]:
        if not self.inbox:
            raise zmq.Again
        return self.inbox.pop(0)

    def getsockopt(self, option: int) -> int:
        assert option == zmq.EVENTS
        return zmq.POLLIN if self.inbox else 0

    def send_multipart(self, frames: list[bytes], flags: int = 0) -> None:
        self.sent.append(list(frames))


class FakeSyncer:
    def __init__(self) -> None:
        self.jobs: list[PendingSync] = []

    def run(self, job: PendingSync) -> Synced:
        self.jobs.append(PendingSync(job.event, list(job.report_for)))
        return Synced([report("web-1", sync_id) for sync_id in job.report_for], {})

    def remember(self, synced: Synced) -> None:
        pass


class RememberingSyncer(FakeSyncer):
    """Remembers like the real Syncer; `applied` is what each sync reports as changed."""

    def __init__(self, memory: MinionMemory) -> None:
        super().__init__()
        self.memory = memory
        self.applied: dict[str, AppliedService | None] = {}

    def run(self, job: PendingSync) -> Synced:
        return Synced(super().run(job).reports, dict(self.applied))

    def remember(self, synced: Synced) -> None:
        self.memory.record(dict(synced.applied), synced.reports)


class Harness:
    def __init__(self, tmp_path: Path, host: str = "web-1", *, remembering: bool = False) -> None:
        self.sub = FakeSocket()
        self.push = FakeSocket()
        self.memory = MinionMemory(tmp_path, tmp_path / "install")
        self.syncer = RememberingSyncer(self.memory) if remembering else FakeSyncer()
        self.mailbox: Mailbox[LoopTask] = Mailbox()
        self.state_file = tmp_path / STATE_FILE
        self.now = 100.0
        self.minion = Minion(
            host=host,
            subscriber=EventSubscriber(self.sub),  # type: ignore[arg-type]
            reporter=Reporter(self.push),  # type: ignore[arg-type]
            syncer=self.syncer,  # type: ignore[arg-type]
            memory=self.memory,
            mailbox=self.mailbox,
            heartbeat_interval_s=5.0,
            boot_id="boot",
            spawn=lambda target: target(),  # run each sync inline
            monotonic=lambda: self.now,
            # Half the span: a resend after a master restart is due 2.5 s after it is heard.
            jitter=lambda span_s: span_s / 2,
        )

    def deliver(self, *events: SyncEvent | list[bytes]) -> None:
        for event in events:
            self.sub.inbox.append(event if isinstance(event, list) else wire.encode(event))
        self.minion.on_readable()
        for callback in self.mailbox.drain():
            callback()

    def sent(self) -> list[Report | Heartbeat]:
        messages = [decode_frames(frames) for frames in self.push.sent]
        return [m for m in messages if isinstance(m, Report | Heartbeat)]

    def reported(self) -> list[str]:
        return [m.sync_id for m in self.sent() if isinstance(m, Report)]


def event(
    seq: int,
    sync_id: str = "s1",
    target: str = "*",
    epoch: int = 7,
    heartbeat_s: float | None = None,
) -> SyncEvent:
    return SyncEvent.carrying(
        STATE,
        epoch=epoch,
        seq=seq,
        sync_id=sync_id,
        target=target,
        issued_at=1.0,
        heartbeat_s=heartbeat_s,
    )


@pytest.fixture
def harness(tmp_path: Path) -> Harness:
    return Harness(tmp_path)


def test_an_event_is_applied_and_reported(harness: Harness) -> None:
    harness.deliver(event(1))
    assert [job.report_for for job in harness.syncer.jobs] == [["s1"]]
    assert harness.reported() == ["s1"]


def test_a_republished_event_is_applied_again_but_reported_once(harness: Harness) -> None:
    harness.deliver(event(1), event(2), event(3, "s2"))
    assert [job.report_for for job in harness.syncer.jobs] == [["s1"], [], ["s2"]]
    assert harness.reported() == ["s1", "s2"]


def test_events_for_other_hosts_are_ignored(harness: Harness) -> None:
    harness.deliver(event(1, target="db-*"), event(2, "s2", target="WEB-*"))
    assert [job.event.sync_id for job in harness.syncer.jobs] == ["s2"]


def test_an_event_addressed_to_other_hosts_is_ignored(harness: Harness) -> None:
    """A batch of a rolling sync: only the hosts it names act, whatever the target says."""
    batch = replace(event(1, "s1"), hosts=("web-2", "web-3"))
    mine = replace(event(2, "s2"), hosts=("web-2", "WEB-1"))
    harness.deliver(batch, mine, event(3, "s3"))
    assert [job.event.sync_id for job in harness.syncer.jobs] == ["s2", "s3"]
    assert harness.reported() == ["s2", "s3"]


def test_gaps_are_counted_and_old_events_dropped(harness: Harness) -> None:
    harness.deliver(event(1), event(4, "s2"), event(3, "s3"), event(4, "s2"))
    assert harness.minion.gaps == 1
    assert [job.event.seq for job in harness.syncer.jobs] == [1, 4]


def test_a_master_restart_resends_the_latest_reports(harness: Harness) -> None:
    harness.memory.record({}, [report("web-1", "old", finished_at=5.0)])
    harness.minion.next_heartbeat = 200.0  # keep heartbeats out of the way
    harness.deliver(event(1))  # first event since our start: resend
    harness.minion.tick(102.5)
    harness.deliver(event(2))
    harness.deliver(event(1, epoch=8))  # the master restarted: resend again
    harness.minion.tick(102.5)
    assert harness.minion.master_restarts == 1
    assert harness.reported() == ["s1", "old", "old"]


def test_the_resend_after_a_master_restart_waits_for_its_jittered_moment(
    harness: Harness,
) -> None:
    """A fleet hears the restarted master's first event at once: each minion resends at
    a moment of its own within a heartbeat interval, not on the event."""
    harness.memory.record({}, [report("web-1", "old", finished_at=5.0)])
    harness.minion.next_heartbeat = 200.0
    harness.deliver(event(1, sync_id="s1"))
    assert harness.reported() == ["s1"]
    assert harness.minion.next_due == 102.5  # 100 + jitter(5 s heartbeat interval)
    harness.minion.tick(102.4)
    assert harness.reported() == ["s1"]
    harness.minion.tick(102.5)
    assert harness.reported() == ["s1", "old"]
    harness.minion.tick(150.0)  # once only
    assert harness.reported() == ["s1", "old"]
    assert harness.minion.next_due == 200.0


def test_reported_sync_ids_survive_a_restart(tmp_path: Path) -> None:
    first = Harness(tmp_path)
    first.memory.record({}, [report("web-1", "s1")])
    first.memory.save()
    second = Harness(tmp_path)
    second.deliver(event(1))
    assert [job.report_for for job in second.syncer.jobs] == [[]]


def test_a_no_op_sync_is_written_down_with_the_next_heartbeat(tmp_path: Path) -> None:
    harness = Harness(tmp_path, remembering=True)
    harness.minion.tick(100.0)
    harness.deliver(event(1))
    assert harness.reported() == ["s1"]
    assert not harness.state_file.exists()  # not on the heels of the answer
    harness.minion.tick(104.0)  # no heartbeat due, no write
    assert not harness.state_file.exists()
    harness.minion.tick(105.0)
    assert MinionMemory(harness.state_file.parent, Path("unused")).reported() == ["s1"]
    assert not harness.memory.dirty


def test_a_sync_that_changed_services_is_written_down_at_once(tmp_path: Path) -> None:
    harness = Harness(tmp_path, remembering=True)
    assert isinstance(harness.syncer, RememberingSyncer)
    harness.syncer.applied = {"web": AppliedService(versions_digest(["1.0"]), ("1.0",))}
    harness.deliver(event(1))
    saved = MinionMemory(harness.state_file.parent, harness.state_file.parent / "install")
    assert saved.reported() == ["s1"]
    assert saved.applied("web") == AppliedService(versions_digest(["1.0"]), ("1.0",))


def test_malformed_events_are_counted_and_dropped(harness: Harness) -> None:
    harness.deliver([b"sync", b"garbage"], [b"sync"], event(1))
    assert harness.minion.subscriber.malformed == 2
    assert harness.reported() == ["s1"]


def test_heartbeats_say_what_was_applied(harness: Harness) -> None:
    harness.minion.tick(100.0)
    (first,) = harness.sent()
    assert isinstance(first, Heartbeat)
    assert first.state_digest is None
    assert first.epoch == 0
    harness.deliver(event(5))
    harness.minion.tick(105.0)
    last = harness.sent()[-1]
    assert isinstance(last, Heartbeat)
    assert (last.epoch, last.seq, last.state_digest) == (7, 5, STATE.digest)
    assert not last.busy
    harness.minion.tick(106.0)  # not due yet
    assert isinstance(harness.sent()[-1], Heartbeat)
    assert len(harness.sent()) == 3


def heartbeat_times(harness: Harness, times: list[float]) -> list[float]:
    """Of `times`, those at which a tick sent a heartbeat."""
    sent = []
    for now in times:
        before = len(harness.sent())
        harness.now = now
        harness.minion.tick(now)
        if len(harness.sent()) > before:
            sent.append(now)
    return sent


def test_the_master_slows_heartbeats_but_never_below_the_minions_own_pace(
    harness: Harness,
) -> None:
    harness.deliver(event(1, target="db-*", heartbeat_s=18.0))  # not for this host: paced still
    assert harness.minion.heartbeat_interval_s == 18.0
    assert heartbeat_times(harness, [100.0, 105.0, 117.9, 118.0, 130.0, 136.0]) == [
        100.0,
        118.0,
        136.0,
    ]
    harness.deliver(event(2, target="db-*", heartbeat_s=2.0))
    assert harness.minion.heartbeat_interval_s == 5.0  # its own
    harness.deliver(event(3, target="db-*"))  # a master that paces nothing changes nothing
    assert harness.minion.heartbeat_interval_s == 5.0


def test_a_faster_pace_brings_the_next_heartbeat_forward(harness: Harness) -> None:
    harness.deliver(event(1, target="db-*", heartbeat_s=20.0))
    assert heartbeat_times(harness, [100.0]) == [100.0]
    assert harness.minion.next_heartbeat == 120.0
    harness.now = 103.0
    harness.deliver(event(2, target="db-*", heartbeat_s=8.0))
    assert harness.minion.next_heartbeat == 111.0
    harness.deliver(event(3, target="db-*", heartbeat_s=30.0))  # slower: as scheduled
    assert harness.minion.next_heartbeat == 111.0
    assert heartbeat_times(harness, [111.0, 140.0, 141.0]) == [111.0, 141.0]


def test_the_subscriber_reads_what_waits_on_a_real_socket_up_to_its_limit() -> None:
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    pull = context.socket(zmq.PULL)
    push = context.socket(zmq.PUSH)
    try:
        pull.bind("inproc://events")
        push.connect("inproc://events")
        for seq in (1, 2):
            push.send_multipart(wire.encode(event(seq)))
        push.send_multipart([b"sync", b"not msgpack"])
        push.send_multipart(wire.encode(event(3)))
        assert pull.poll(5000, zmq.POLLIN)
        subscriber = EventSubscriber(pull)

        assert [e.seq for e in subscriber.receive_batch(2)] == [1, 2]
        assert [e.seq for e in subscriber.receive_batch(64)] == [3]
        assert subscriber.receive_batch(64) == []
        assert (subscriber.received, subscriber.malformed) == (3, 1)
    finally:
        push.close(linger=0)
        pull.close(linger=0)
        context.term()
