"""The master loop on a thread of its own in the test's process, over sockets the test
made: what the loop tests share. The database is opened on the loop's thread, as in the
master process; each test file gives the parts it varies (collector, tuning, pins...)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import zmq

from daybook.mailbox import Mailbox
from daybook.stopping import StopFlag
from daybook_testing.waiting import wait_for
from master.changes import Change, Wake
from master.collector import Collector
from master.control_server import ControlServer
from master.database import ResultsDatabase
from master.ledger import Fleet
from master.master import Master
from master.publisher import Publisher


@contextmanager
def master_thread(
    tmp_path: Path,
    sockets: dict[zmq.SocketType, zmq.Socket[bytes]],
    mailbox: Mailbox[Change],
    *,
    collector: Callable[[zmq.Socket[bytes]], Collector] = Collector,
    **parts: Any,
) -> Iterator[None]:
    """Runs `Master(epoch=1, ...)` on the PUB, PULL and ROUTER `sockets` with `parts` as
    its other arguments, from when it is built until the block ends; then stops it."""
    stop = StopFlag()
    built: list[Master] = []

    def run() -> None:
        database = ResultsDatabase(tmp_path / "master.db")
        master = Master(
            epoch=1,
            publisher=Publisher(sockets[zmq.PUB]),
            collector=collector(sockets[zmq.PULL]),
            control=ControlServer(sockets[zmq.ROUTER]),
            database=database,
            fleet=Fleet(down_after_s=3600.0),
            mailbox=mailbox,
            **parts,
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
        yield
    finally:
        stop.set()
        mailbox.post(Wake())
        loop.join()
