"""The master loop on inproc sockets: what wakes it and what a heartbeat costs the snapshot."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import zmq
from master_thread import master_thread
from messages import heartbeat, report

from daybook import wire
from daybook.mailbox import Mailbox
from daybook.model.messages import Heartbeat
from daybook.model.results import Report
from daybook_testing.waiting import wait_for
from master.changes import Change
from master.collector import Collector
from master.metrics import MasterMetrics
from master.snapshot import FleetSnapshot, SnapshotBox
from master.tuning import MasterTuning

CollectorFactory = Callable[[zmq.Socket[bytes]], Collector]


@contextmanager
def running_master(
    context: zmq.Context[zmq.Socket[bytes]],
    tmp_path: Path,
    tuning: MasterTuning,
    *,
    collector: CollectorFactory = Collector,
    snapshots: SnapshotBox | None = None,
) -> Iterator[tuple[MasterMetrics, zmq.Socket[bytes]]]:
    """A master loop on its own thread, its metrics, and a minion's PUSH socket connected
    to it."""
    name = tmp_path.name
    sockets = {kind: context.socket(kind) for kind in (zmq.PUB, zmq.PULL, zmq.ROUTER)}
    for kind, socket in sockets.items():
        socket.bind(f"inproc://{name}-{kind}")
    minion = context.socket(zmq.PUSH)
    minion.connect(f"inproc://{name}-{zmq.PULL}")
    mailbox: Mailbox[Change] = Mailbox()
    metrics = MasterMetrics()
    try:
        with master_thread(
            tmp_path,
            sockets,
            mailbox,
            collector=collector,
            tuning=tuning,
            snapshots=snapshots,
            metrics=metrics,
        ):
            yield metrics, minion
    finally:
        minion.close(linger=0)
        for socket in sockets.values():
            socket.close(linger=0)
        mailbox.close()


def heartbeats(metrics: MasterMetrics) -> float | None:
    """How many heartbeats the master has recorded, as /metrics would say."""
    return metrics.registry.get_sample_value("daybook_heartbeats_total")


def test_heartbeats_that_only_move_last_seen_do_not_copy_the_fleet(
    context: zmq.Context[zmq.Socket[bytes]], tmp_path: Path
) -> None:
    """A new host or a restarted one shows in the snapshot at once; a heartbeat from a host
    already up waits for the slow heartbeat refresh (here: never within the test)."""
    snapshots = SnapshotBox(FleetSnapshot(1, 0.0, 3600.0, {}))
    # Every change but a heartbeat's last-seen time is published at once.
    tuning = MasterTuning(view_interval_s=0.0, heartbeat_view_interval_s=3600.0)
    with running_master(context, tmp_path, tuning, snapshots=snapshots) as (metrics, minion):
        published = snapshots.published
        minion.send_multipart(wire.encode(heartbeat("web-1", "boot1")))
        wait_for(lambda: "web-1" in snapshots.current.hosts, "the new host in the snapshot")
        assert snapshots.published == published + 1
        first_seen = snapshots.current.hosts["web-1"].last_seen

        minion.send_multipart(wire.encode(heartbeat("web-1", "boot1")))
        wait_for(lambda: heartbeats(metrics) == 2, "the second heartbeat")
        assert snapshots.published == published + 1
        assert snapshots.current.hosts["web-1"].last_seen == first_seen

        minion.send_multipart(wire.encode(heartbeat("web-1", "boot2")))
        wait_for(lambda: snapshots.current.hosts["web-1"].boot_id == "boot2", "the restart shown")
        assert snapshots.published == published + 2
        assert snapshots.current.hosts["web-1"].last_seen >= first_seen


class CountingCollector(Collector):
    """Counts the reads of the results socket that found something."""

    def __init__(self, socket: zmq.Socket[bytes]) -> None:
        super().__init__(socket)
        self.batches: list[int] = []
        self.read_at: list[float] = []

    def receive_batch(self, limit: int) -> list[tuple[Report | Heartbeat, bytes]]:
        messages = super().receive_batch(limit)
        if messages:
            self.batches.append(len(messages))
            self.read_at.append(time.monotonic())
        return messages


def counting_collectors() -> tuple[list[CountingCollector], CollectorFactory]:
    """A collector factory for the master, and the list of the collectors it made."""
    made: list[CountingCollector] = []

    def counting(socket: zmq.Socket[bytes]) -> Collector:
        made.append(CountingCollector(socket))
        return made[-1]

    return made, counting


def test_a_quiet_master_reads_heartbeats_in_batches(
    context: zmq.Context[zmq.Socket[bytes]], tmp_path: Path
) -> None:
    """With no sync in flight, heartbeats arriving one by one wake the loop in batches."""
    collectors, counting = counting_collectors()
    tuning = MasterTuning(quiet_collect_interval_s=0.4, busy_window_s=0.0)
    with running_master(context, tmp_path, tuning, collector=counting) as (metrics, minion):
        minion.send_multipart(wire.encode(heartbeat("web-1", "boot1")))
        wait_for(lambda: heartbeats(metrics) == 1, "the first heartbeat")
        # Ten heartbeats within 0.2 s, each on its own: a loop reading as they come would
        # wake ten times; a quiet one reads them in one or two batches.
        for number in range(10):
            minion.send_multipart(wire.encode(heartbeat(f"web-{number + 2}", "boot1")))
            threading.Event().wait(0.02)
        wait_for(lambda: heartbeats(metrics) == 11, "all heartbeats")
        (collector,) = collectors
        assert collector.batches[0] == 1
        assert len(collector.batches[1:]) <= 2, collector.batches


def test_a_quiet_master_reads_a_backlog_at_once(
    context: zmq.Context[zmq.Socket[bytes]], tmp_path: Path
) -> None:
    """The quiet pause is for heartbeats trickling in: a read that stopped at the batch
    limit is followed by the next at once, not a pause later."""
    collectors, counting = counting_collectors()
    tuning = MasterTuning(quiet_collect_interval_s=2.0, busy_window_s=0.0, batch_limit=10)
    with running_master(context, tmp_path, tuning, collector=counting) as (metrics, minion):
        minion.send_multipart(wire.encode(heartbeat("web-0", "boot1")))
        wait_for(lambda: heartbeats(metrics) == 1, "the first heartbeat")
        # 35 more while the loop pauses: read in four batches when the pause ends.
        for number in range(1, 36):
            minion.send_multipart(wire.encode(heartbeat(f"web-{number}", "boot1")))
        wait_for(lambda: heartbeats(metrics) == 36, "the backlog")
        (collector,) = collectors
        assert collector.batches == [1, 10, 10, 10, 5]
        # One after another: three pauses would have taken 6 s.
        assert collector.read_at[-1] - collector.read_at[1] < 1.0, collector.read_at


def test_a_quiet_master_reads_reports_sooner_than_heartbeats(
    context: zmq.Context[zmq.Socket[bytes]], tmp_path: Path
) -> None:
    """After a read of heartbeats alone the loop pauses the longer quiet pause; after a
    read that found a report, the shorter one: reports arriving unasked keep their pace."""
    collectors, counting = counting_collectors()
    tuning = MasterTuning(
        quiet_collect_interval_s=3.0, report_collect_interval_s=0.1, busy_window_s=0.0
    )
    with running_master(context, tmp_path, tuning, collector=counting) as (metrics, minion):
        minion.send_multipart(wire.encode(heartbeat("web-0", "boot1")))
        wait_for(lambda: heartbeats(metrics) == 1, "the first heartbeat")
        (collector,) = collectors
        minion.send_multipart(wire.encode(report("web-0", "s1", finished_at=10.0)))
        wait_for(lambda: len(collector.batches) == 2, "the first report", timeout_s=10.0)
        minion.send_multipart(wire.encode(report("web-0", "s2", finished_at=11.0)))
        wait_for(lambda: len(collector.batches) == 3, "the second report")
        first, second, third = collector.read_at
        assert second - first >= 2.5, collector.read_at  # the heartbeats' pause
        assert third - second < 1.5, collector.read_at  # the reports' pause


def test_an_idle_master_sleeps_until_its_periodic_tasks(
    context: zmq.Context[zmq.Socket[bytes]], tmp_path: Path
) -> None:
    """With nothing changed to save and nothing in flight, the loop does not wake every
    host-flush interval; once a heartbeat changed a host, the flush comes."""
    tuning = MasterTuning(host_flush_interval_s=0.2, busy_window_s=0.0)
    with running_master(context, tmp_path, tuning) as (metrics, minion):
        wakeups = metrics.registry.get_sample_value

        def settled() -> bool:
            before = wakeups("daybook_loop_wakeups_total")
            threading.Event().wait(0.3)  # longer than a flush interval
            return wakeups("daybook_loop_wakeups_total") == before

        wait_for(settled, "the loop to sleep")
        # Three flush intervals asleep: not one wake-up.
        before = wakeups("daybook_loop_wakeups_total")
        threading.Event().wait(0.6)
        assert wakeups("daybook_loop_wakeups_total") == before

        minion.send_multipart(wire.encode(heartbeat("web-1", "boot1")))
        wait_for(lambda: saved_hosts(tmp_path / "master.db") == ["web-1"], "the host saved")
        wait_for(settled, "the loop to sleep again")


def saved_hosts(path: Path) -> list[str]:
    """The hosts the master's database holds, read as another process would."""
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as database:
        return [host for (host,) in database.execute("SELECT host FROM hosts ORDER BY host")]


def test_the_collector_refuses_malformed_messages_whole_and_reads_on() -> None:
    # Frame by frame, a message's frames must stay together: one with too many, or with
    # its topic alone, is refused whole, and the next message is read from its first frame.
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        pull, push = context.socket(zmq.PULL), context.socket(zmq.PUSH)
        port = pull.bind_to_random_port("tcp://127.0.0.1")
        push.connect(f"tcp://127.0.0.1:{port}")
        sent = heartbeat("web-1")
        big = report("web-2")
        push.send_multipart([wire.TOPIC_HEARTBEAT])
        push.send_multipart([wire.TOPIC_HEARTBEAT, *[b"\x80"] * 1000])
        push.send_multipart(wire.encode(sent))
        # A payload split over frames, as a large report is sent, is joined again.
        payload = wire.payload(big)
        push.send_multipart([wire.TOPIC_REPORT, payload[:7], payload[7:]])
        collector = Collector(pull)
        received: list[tuple[Report | Heartbeat, bytes]] = []
        wait_for(
            lambda: bool(received.extend(collector.receive_batch(10)) or len(received) == 2),
            "the two good messages",
        )
        assert received == [(sent, wire.payload(sent)), (big, payload)]
        assert (collector.malformed, collector.received) == (2, 2)
    finally:
        context.destroy(linger=0)


def test_a_results_database_locked_past_its_timeout_does_not_stop_the_master(
    context: zmq.Context[zmq.Socket[bytes]], tmp_path: Path
) -> None:
    """Another process holds the database's write lock beyond the busy timeout (5 s): the
    report read meanwhile cannot be recorded, which is logged and counted, and the master
    reads and records on once the lock is gone."""
    tuning = MasterTuning(busy_window_s=0.0)
    with running_master(context, tmp_path, tuning) as (metrics, minion):
        minion.send_multipart(wire.encode(heartbeat("web-1", "boot1")))
        wait_for(lambda: heartbeats(metrics) == 1, "the first heartbeat")
        with closing(sqlite3.connect(tmp_path / "master.db", isolation_level=None)) as other:
            other.execute("BEGIN EXCLUSIVE")
            minion.send_multipart(wire.encode(report("web-1", "s1", finished_at=10.0)))
            wait_for(
                lambda: task_failures(metrics, "results") == 1,
                "the locked database to fail a read",
                timeout_s=15.0,
            )
            other.execute("ROLLBACK")
        minion.send_multipart(wire.encode(report("web-1", "s2", finished_at=11.0)))
        wait_for(
            lambda: (
                metrics.registry.get_sample_value("daybook_reports_total", {"result": "ok"}) == 1
            ),
            "the next report to be recorded",
        )


def task_failures(metrics: MasterMetrics, task: str) -> float | None:
    return metrics.registry.get_sample_value("daybook_task_failures_total", {"task": task})
