"""Master capacity: how many reports a second it ingests (decrypted, checked, recorded).

A load generator speaks the minions' protocol over CURVE with its own keys: one heartbeat
per host (auto-accept binds each key to that host), then reports as fast as the master
takes them. The figure is reports over the time from the first send until the master's
`daybook_reports_total` counter has counted them all.
"""

from __future__ import annotations

import functools
import time
import uuid
from typing import TYPE_CHECKING

from bench.fleet import Fleet, backends, running
from bench.results import Results, Target
from bench.timing import Options

if TYPE_CHECKING:
    import zmq

SECTION = "ingest"
REPORTS_PER_S = Target(5000, at_least=True)
HOSTS = 8


def run(results: Results, options: Options) -> None:
    import zmq

    count = 5_000 if options.quick else 20_000
    with backends(options) as servers:
        fleet = Fleet(options, servers, "ingest")
        with running(fleet):
            fleet.start_master()
            context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
            sockets: list[zmq.Socket[bytes]] = []
            try:
                now = time.time()
                hosts = [f"ingest-{index}" for index in range(HOSTS)]
                connect_hosts(fleet, context, sockets, hosts, now)
                rates = [
                    ingest_rate(fleet, sockets, hosts, count, now)
                    for _ in range(options.warmup + options.runs)
                ]
            finally:
                for socket in sockets:
                    socket.close()
                context.term()
    results.add(
        SECTION,
        "reports ingested per second",
        "per_s",
        rates[options.warmup :],
        target=REPORTS_PER_S,
        note=f"{count:,} reports a run from {HOSTS} hosts over CURVE",
    )


def connect_hosts(
    fleet: Fleet,
    context: zmq.Context[zmq.Socket[bytes]],
    sockets: list[zmq.Socket[bytes]],
    hosts: list[str],
    now: float,
) -> None:
    """A CURVE socket to the master's results port for each host, added to `sockets`, and
    one heartbeat from each, so the master binds each key to its host and shows it up."""
    import zmq

    from daybook import wire
    from daybook.model.messages import Heartbeat
    from daybook.net.keys import KeyPair
    from daybook.net.transport import ClientCredentials, fetch_master_key, secure_client

    server_key = fetch_master_key(context, f"tcp://127.0.0.1:{fleet.ports['key']}")
    for host in hosts:
        socket = context.socket(zmq.PUSH)
        socket.setsockopt(zmq.LINGER, 0)
        secure_client(socket, ClientCredentials(KeyPair.generate(), server_key))
        socket.connect(f"tcp://127.0.0.1:{fleet.ports['results']}")
        heartbeat = Heartbeat(host, uuid.uuid4().hex, now, now, 0, 0, None, busy=False)
        socket.send_multipart(wire.encode(heartbeat))
        sockets.append(socket)
    fleet.wait_for(
        functools.partial(all_up, fleet, hosts),
        "the load generator's hosts to be up",
        60.0,
    )


def ingest_rate(
    fleet: Fleet, sockets: list[zmq.Socket[bytes]], hosts: list[str], count: int, now: float
) -> float:
    """Reports a second over one run: `count` reports sent, until the master counted all."""
    from daybook import wire
    from daybook.model.ids import versions_digest
    from daybook.model.results import Report

    digest = versions_digest(["1"])
    frames = [
        wire.encode(
            Report(
                report_id=uuid.uuid4().hex,
                host=hosts[index % HOSTS],
                sync_id=uuid.uuid4().hex,
                epoch=1,
                seq=index,
                state_digest=digest,
                pattern="ingest-*",
                services={},
                installed={"svc0": ("1",)},
                started_at=now,
                finished_at=now,
            )
        )
        for index in range(count)
    ]
    baseline = fleet.metrics().get("daybook_reports_total", 0.0)
    start = time.perf_counter()
    for index, message in enumerate(frames):
        sockets[index % HOSTS].send_multipart(message)
    fleet.wait_for(
        functools.partial(counted, fleet, baseline + count),
        f"the master to count {count:,} reports",
        300.0,
    )
    return count / (time.perf_counter() - start)


def all_up(fleet: Fleet, hosts: list[str]) -> bool:
    entries = fleet.status().hosts
    return all(host in entries and entries[host].up for host in hosts)


def counted(fleet: Fleet, total: float) -> bool:
    return fleet.metrics().get("daybook_reports_total", 0.0) >= total
