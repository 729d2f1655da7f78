"""The master loop on inproc sockets: what wakes it and what a heartbeat costs the snapshot."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq
from inprocess_fleet import wait_for
from messages import heartbeat

from daybook.mailbox import Mailbox
from daybook.stopping import StopFlag
from master.changes import Change, Wake
from master.collector import Collector
from master.control_server import ControlServer
from master.database import ResultsDatabase
from master.fleet import Fleet
from master.master import Master, MasterTuning
from master.publisher import Publisher
from master.snapshot import FleetSnapshot, SnapshotBox


@pytest.fixture
def context() -> Iterator[zmq.Context[zmq.Socket[bytes]]]:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)


def test_heartbeats_that_only_move_last_seen_do_not_copy_the_fleet(
    context: zmq.Context[zmq.Socket[bytes]], tmp_path: Path
) -> None:
    """A new host or a restarted one shows in the snapshot at once; a heartbeat from a host
    already up waits for the slow heartbeat refresh (here: never within the test)."""
    sockets = {kind: context.socket(kind) for kind in (zmq.PUB, zmq.PULL, zmq.ROUTER)}
    for kind, socket in sockets.items():
        socket.bind(f"inproc://master-{kind}")
    minion = context.socket(zmq.PUSH)
    minion.connect(f"inproc://master-{zmq.PULL}")
    mailbox: Mailbox[Change] = Mailbox()
    snapshots = SnapshotBox(FleetSnapshot(1, 0.0, 3600.0, {}))
    built: list[Master] = []
    stop = StopFlag()

    def run() -> None:
        # The database belongs to the loop's thread, as in the master process.
        database = ResultsDatabase(tmp_path / "master.db")
        master = Master(
            epoch=1,
            publisher=Publisher(sockets[zmq.PUB]),
            collector=Collector(sockets[zmq.PULL]),
            control=ControlServer(sockets[zmq.ROUTER]),
            database=database,
            fleet=Fleet(down_after_s=3600.0),
            mailbox=mailbox,
            # Every change but a heartbeat's last-seen time is published at once.
            tuning=MasterTuning(view_interval_s=0.0, heartbeat_view_interval_s=3600.0),
            snapshots=snapshots,
        )
        built.append(master)
        try:
            master.run(stop)
        finally:
            database.close()

    loop = threading.Thread(target=run)
    loop.start()
    try:
        wait_for(lambda: built, "the master to start")
        counters = built[0].counters
        published = snapshots.published
        minion.send_multipart(heartbeat("web-1", "boot1").encode())
        wait_for(lambda: "web-1" in snapshots.current.hosts, "the new host in the snapshot")
        assert snapshots.published == published + 1
        first_seen = snapshots.current.hosts["web-1"].last_seen

        minion.send_multipart(heartbeat("web-1", "boot1").encode())
        wait_for(lambda: counters["heartbeats"] == 2, "the second heartbeat")
        assert snapshots.published == published + 1
        assert snapshots.current.hosts["web-1"].last_seen == first_seen

        minion.send_multipart(heartbeat("web-1", "boot2").encode())
        wait_for(lambda: snapshots.current.hosts["web-1"].boot_id == "boot2", "the restart shown")
        assert snapshots.published == published + 2
        assert snapshots.current.hosts["web-1"].last_seen >= first_seen
    finally:
        stop.set()
        mailbox.post(Wake())
        loop.join()
        minion.close(linger=0)
        for socket in sockets.values():
            socket.close(linger=0)
        mailbox.close()
