"""Fencing on a minion: it acts only on events of the highest leader's term it has seen."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
import zmq
from messages import report
from test_minion_minion import FakeSocket, FakeSyncer, Harness, event

from daybook import wire
from daybook.config import load_settings
from daybook.mailbox import Mailbox
from daybook.model.messages import Heartbeat, SyncEvent
from daybook.model.results import Report
from daybook.wire import decode_frames
from daybook_testing.waiting import wait_for
from minion.memory import MinionMemory
from minion.minion import LoopTask, Minion
from minion.process import close_minion, connect_sockets
from minion.reporter import Reporter
from minion.subscriber import EventSubscriber


def termed(seq: int, term: int, sync_id: str = "s1", epoch: int = 7) -> SyncEvent:
    return replace(event(seq, sync_id, epoch=epoch), term=term)


@pytest.fixture
def harness(tmp_path: Path) -> Harness:
    return Harness(tmp_path)


def applied(harness: Harness) -> list[str]:
    return [job.event.sync_id for job in harness.syncer.jobs]


def test_a_lower_term_is_ignored_even_with_a_newer_epoch_and_seq(harness: Harness) -> None:
    harness.deliver(termed(1, 4, "s1", epoch=7))
    harness.deliver(termed(50, 3, "deposed", epoch=99))
    harness.deliver(termed(2, 4, "s2", epoch=7))
    assert applied(harness) == ["s1", "s2"]
    assert harness.minion.term == 4
    assert harness.minion.stale_events == 1
    assert harness.minion.master_restarts == 0, "the deposed leader's epoch is not a restart"
    assert harness.minion.gaps == 0, "nor do its seqs count against the leader's"


def test_a_deposed_leaders_events_never_reach_the_worker(harness: Harness) -> None:
    harness.deliver(termed(1, 2, "old-1"), termed(1, 3, "new-1", epoch=8))
    # The old leader resumes (a paused process, a healed partition) and publishes on.
    harness.deliver(*(termed(seq, 2, f"old-{seq}") for seq in range(2, 6)))
    assert applied(harness) == ["old-1", "new-1"]
    assert harness.reported() == ["old-1", "new-1"]


def test_a_higher_term_is_a_new_leader_that_gets_the_outbox_again(harness: Harness) -> None:
    harness.memory.record({}, [report("web-1", "old", finished_at=5.0)])
    harness.deliver(termed(1, 1, "s1"))  # first event since our start: resend
    harness.minion.tick(200.0)  # past its jittered moment (the harness's clock says 100)
    harness.deliver(termed(5, 2, "s2", epoch=7))  # same epoch, a new leader: resend
    harness.minion.tick(300.0)
    assert harness.reported() == ["s1", "old", "s2", "old"]
    assert harness.minion.leader_changes == 1
    assert harness.minion.master_restarts == 0
    assert harness.minion.gaps == 0, "the new leader's seq starts afresh"


def test_the_new_leaders_seq_tracking_starts_afresh(harness: Harness) -> None:
    harness.deliver(termed(9, 1, "s1"))
    harness.deliver(termed(1, 2, "s2", epoch=8), termed(2, 2, "s3", epoch=8))
    assert applied(harness) == ["s1", "s2", "s3"]


def test_term_zero_is_the_lowest(harness: Harness) -> None:
    """A master without election (term 0) cannot outrank one holding a term."""
    harness.deliver(termed(1, 0, "s1"), termed(2, 1, "s2"), termed(3, 0, "s3", epoch=9))
    assert applied(harness) == ["s1", "s2"]
    assert harness.minion.leader_changes == 1


def test_one_master_without_election_behaves_as_before(harness: Harness) -> None:
    harness.deliver(event(1), event(2, "s2"), event(1, "s3", epoch=8))
    assert applied(harness) == ["s1", "s2", "s3"]
    assert harness.minion.master_restarts == 1
    assert harness.minion.leader_changes == 0


def test_each_ignored_term_is_logged_once(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="minion.minion")
    harness.deliver(termed(1, 4))
    harness.deliver(*(termed(seq, 3, f"x{seq}") for seq in range(1, 4)))
    harness.deliver(termed(1, 2, "y"))
    lines = [r.getMessage() for r in caplog.records if "ignoring" in r.getMessage()]
    assert lines == [
        "ignoring events of term 3: term 4 leads",
        "ignoring events of term 2: term 4 leads",
    ]


class _Link(Reporter):
    """A reporter to one master whose link comes back when the test says so."""

    def __init__(self) -> None:
        self.fake = FakeSocket()
        super().__init__(self.fake)  # type: ignore[arg-type]
        self.link_back = False

    def reconnected(self) -> bool:
        back, self.link_back = self.link_back, False
        return back

    def reports(self) -> list[str]:
        sent = [decode_frames(frames) for frames in self.fake.sent]
        return [m.sync_id for m in sent if isinstance(m, Report)]

    def heartbeats(self) -> int:
        return sum(isinstance(decode_frames(frames), Heartbeat) for frames in self.fake.sent)


def test_reports_and_heartbeats_go_to_every_master_and_a_link_back_gets_the_outbox(
    tmp_path: Path,
) -> None:
    first, second = _Link(), _Link()
    memory = MinionMemory(tmp_path, tmp_path / "install")
    memory.record({}, [report("web-1", "s0", finished_at=5.0)])
    minion = Minion(
        host="web-1",
        subscriber=EventSubscriber(FakeSocket()),  # type: ignore[arg-type]
        reporter=first,
        more_reporters=[second],
        syncer=None,  # type: ignore[arg-type]
        memory=memory,
        mailbox=Mailbox[LoopTask](),
        heartbeat_interval_s=1.0,
        boot_id="boot",
        monotonic=lambda: 0.0,
    )
    minion.tick(0.0)
    assert (first.heartbeats(), second.heartbeats()) == (1, 1)
    assert first.reports() == second.reports() == []
    second.link_back = True
    minion.tick(1.0)
    assert first.reports() == [], "only the master whose link came back gets them again"
    assert second.reports() == ["s0"]
    assert (first.heartbeats(), second.heartbeats()) == (2, 2)


# -- on real sockets: one SUB connected to two masters' PUB sockets ------------------------


class TwoMasters:
    """Two in-test masters' PUB sockets on loopback, and a minion subscribed to both through
    the sockets a minion process builds from `master = "A,B"`."""

    def __init__(self, tmp_path: Path) -> None:
        self.context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self.pubs = [self.context.socket(zmq.PUB) for _ in range(2)]
        for pub in self.pubs:
            pub.setsockopt(zmq.LINGER, 0)
            pub.bind("tcp://127.0.0.1:*")
        ports = [pub.getsockopt_string(zmq.LAST_ENDPOINT).rsplit(":", 1)[1] for pub in self.pubs]
        settings = load_settings(
            env={
                "DAYBOOK_MASTER": ",".join(f"127.0.0.1:{port}" for port in ports),
                "DAYBOOK_DATA_DIR": str(tmp_path),
                "DAYBOOK_INSECURE_TRANSPORT": "true",
            }
        )
        subscriber, reporters = connect_sockets(self.context, settings, None)
        self.syncer = FakeSyncer()
        self.mailbox: Mailbox[LoopTask] = Mailbox()
        self.minion = Minion(
            host="web-1",
            subscriber=subscriber,
            reporter=reporters[0],
            more_reporters=reporters[1:],
            syncer=self.syncer,  # type: ignore[arg-type]
            memory=MinionMemory(tmp_path, tmp_path / "install"),
            mailbox=self.mailbox,
            heartbeat_interval_s=5.0,
            boot_id="boot",
            spawn=lambda target: target(),
        )

    def applied(self) -> list[str]:
        return [job.event.sync_id for job in self.syncer.jobs]

    def publish_until(self, master: int, event: SyncEvent, seen: Callable[[], bool]) -> None:
        """Publish `event` again until `seen` (a PUB drops what goes out before the
        subscription reaches it)."""

        def delivered() -> bool:
            self.pubs[master].send_multipart(wire.encode(event))
            if self.minion.socket.poll(50, zmq.POLLIN):
                self.minion.on_readable()
                for task in self.mailbox.drain():
                    task()
            return seen()

        wait_for(delivered, f"{event.sync_id} from master {master}")

    def close(self) -> None:
        close_minion(self.minion)
        for pub in self.pubs:
            pub.close()
        self.context.term()


def test_a_minion_of_two_masters_acts_only_on_the_higher_term(tmp_path: Path) -> None:
    masters = TwoMasters(tmp_path)
    try:
        assert len(masters.minion.reporters) == 2, "a PUSH socket per master"
        masters.publish_until(0, termed(1, 1, "a1"), lambda: "a1" in masters.applied())
        masters.publish_until(1, termed(1, 2, "b1", epoch=8), lambda: "b1" in masters.applied())
        # The deposed first master publishes on; its events reach the minion and stop there.
        masters.publish_until(0, termed(2, 1, "a2"), lambda: masters.minion.stale_events >= 3)
        masters.publish_until(1, termed(2, 2, "b2", epoch=8), lambda: "b2" in masters.applied())
        # Republished until seen: each applied (idempotently) as often as it came.
        assert set(masters.applied()) == {"a1", "b1", "b2"}
        assert "a2" not in masters.applied()
        assert masters.minion.term == 2
    finally:
        masters.close()
