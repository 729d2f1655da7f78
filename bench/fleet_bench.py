"""Fan-out, no-op cost and capacity of a real fleet: minion processes, and a 1,000-minion swarm.

Both fleets run on the shipped defaults (CURVE on, 5 s heartbeats) against a counted moto
S3 and a Consul-compatible registry holding 1,000 patterns, with 100 services in the store.
"""

from __future__ import annotations

import functools
import statistics
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from bench.fleet import (
    MINION_ID,
    PATTERNS,
    SERVICES,
    Backends,
    Fleet,
    backends,
    fleet_table,
    idle_window_s,
    pause,
    running,
    seed_backends,
)
from bench.procstat import cpu_shares, pss_bytes, rss_bytes
from bench.results import Results, Target
from bench.timing import Options, rounds

MIB = 1024 * 1024
# From the speed issue.
FANOUT_TARGETS = {10: None, 50: Target(0.3), 100: Target(0.5)}
SWARM_FANOUT = Target(1.0)
FLEET_STARTUP = Target(10.0)
MINION_PSS_MIB = Target(40.0)
MINION_IDLE_CPU = Target(0.1)
MASTER_IDLE_CPU = Target(1.0)
MASTER_RSS_MB = Target(150.0)
NO_REQUESTS = Target(0.0)
EVENT_BYTES = Target(32_000)
SWARM_SIZE = 1000
FLEET = "fleet"
SWARM = "swarm"

# Process minions are named so that one glob picks the first 10, 50 or 100 of them.
GROUPS = {10: "*.g10.g50.g100.fleet", 50: "*.g50.g100.fleet", 100: "*.g100.fleet"}
MAPPINGS = {
    "*.fleet": ("svc0", "svc1"),
    "*.g100.fleet": ("svc0", "svc1", "svc2"),
    "swarm-*": ("svc0", "svc3"),
}


# The master reads answers as they come for 5 s after its last event (MasterTuning's
# busy_window_s), then settles into reading heartbeats in batches: idle is measured after.
SETTLE_S = 6.0


def settle_after_syncs(results: Results, section: str, master_pid: int, fleet: str) -> None:
    """Let the master settle after the timed syncs, and report what that took."""
    (share,) = cpu_shares([master_pid], SETTLE_S, pause)
    results.add(
        section,
        f"master CPU, {SETTLE_S:g} s right after the syncs, {fleet}",
        "percent",
        [share],
        note="% of a core; before the idle window",
    )


def process_hosts() -> list[str]:
    hosts = []
    for index in range(100):
        groups = "g10.g50.g100" if index < 10 else "g50.g100" if index < 50 else "g100"
        hosts.append(f"m{index:03d}.{groups}.fleet")
    return hosts


def run_processes(results: Results, options: Options) -> None:
    hosts = process_hosts()
    with seeded_fleet(options, "processes") as (fleet, servers):
        started = time.monotonic()
        fleet.start_minions(hosts)
        fleet.wait_answering(hosts, timeout_s=300)
        add_startup(
            results,
            FLEET,
            "start-up: 100 minion processes until all answer",
            started,
            note="first start: keys made and accepted, 2-3 services installed each",
            target=FLEET_STARTUP,
        )
        measure_process_syncs(results, options, fleet, servers)
        measure_processes_idle(results, options, fleet, servers)
        add_event_bytes(results, fleet)
        measure_process_restart(results, fleet, hosts)


@contextmanager
def seeded_fleet(options: Options, name: str) -> Iterator[tuple[Fleet, Backends]]:
    """The servers, seeded with the services and 1,000 patterns, and a master running."""
    with backends(options) as servers:
        seed_backends(servers, options, fleet_table(MAPPINGS, PATTERNS))
        fleet = Fleet(options, servers, name)
        with running(fleet):
            fleet.start_master()
            yield fleet, servers


def measure_process_syncs(
    results: Results, options: Options, fleet: Fleet, servers: Backends
) -> None:
    """No-op syncs of 10, 50 and 100 minions: the operator's command, and the same round
    trip from a client already running (the difference is the CLI's own start)."""
    before = request_counts(servers)
    contenders: dict[str, Callable[[], float]] = {}
    for size, target in GROUPS.items():
        contenders[f"cli {size}"] = functools.partial(fleet.sync_wait, target, size)
        contenders[f"client {size}"] = functools.partial(fleet.sync_in_process, target, size)
    contenders["rolling 10"] = functools.partial(fleet.rolling_sync_in_process, GROUPS[10], 10, "3")
    timings = rounds(contenders, runs=options.runs, warmup=options.warmup)
    syncs = (options.runs + options.warmup) * len(contenders)
    for size in GROUPS:
        results.add(
            FLEET,
            f"no-op sync --wait, {size} minion processes",
            "s",
            timings[f"cli {size}"],
            target=FANOUT_TARGETS[size],
            note="the daybook command, start-up included",
        )
    for size in GROUPS:
        results.add(
            FLEET,
            f"no-op sync round trip, {size} processes, no CLI",
            "s",
            timings[f"client {size}"],
            note="from a connected operator client",
        )
    results.add(
        FLEET,
        "no-op rolling sync, 10 processes in batches of 3, no CLI",
        "s",
        timings["rolling 10"],
        note="4 batches one after another, each waiting for its hosts",
    )
    add_request_counts(results, servers, before, f"{syncs} no-op syncs, 100 processes")


def measure_processes_idle(
    results: Results, options: Options, fleet: Fleet, servers: Backends
) -> None:
    """After the syncs have settled: CPU over an idle window, requests, memory."""
    before = request_counts(servers)
    assert fleet.master is not None
    settle_after_syncs(results, FLEET, fleet.master.pid, "100 minions")
    window_s = idle_window_s(options)
    pids = [fleet.master.pid, *fleet.pids.values()]
    shares = cpu_shares(pids, window_s, pause)
    add_request_counts(results, servers, before, f"{window_s:g} s idle, 100 processes")
    results.add(
        FLEET,
        "master idle CPU, 100 minions",
        "percent",
        [shares[0]],
        target=MASTER_IDLE_CPU,
        note=f"% of a core over {window_s:g} s",
    )
    minion_shares = shares[1:]
    results.add(
        FLEET,
        "minion idle CPU (each of 100)",
        "percent",
        minion_shares,
        target=MINION_IDLE_CPU,
        note=f"% of a core over {window_s:g} s; mean {statistics.mean(minion_shares):.3f}",
    )
    add_minion_pss(results, fleet, "minion PSS (each of 100)")
    results.add(FLEET, "master RSS, 100 minions", "MB", [rss_bytes(fleet.master.pid) / 1e6])


def measure_process_restart(results: Results, fleet: Fleet, hosts: list[str]) -> None:
    """A fleet restart: keys accepted and services installed already."""
    boot_ids = {host: entry.boot_id for host, entry in fleet.status().hosts.items()}
    fleet.stop_minions()
    started = time.monotonic()
    fleet.start_minions(hosts)
    fleet.wait_for(functools.partial(fleet.booted, boot_ids), "100 minions to restart", 300.0)
    fleet.sync_in_process(GROUPS[100], 100)
    add_startup(
        results,
        FLEET,
        "start-up: 100 minion processes restarted until all answer",
        started,
        note="keys accepted, nothing to install; then a sync all answer",
        target=FLEET_STARTUP,
    )
    add_minion_pss(
        results,
        fleet,
        "minion PSS after the restart (each of 100)",
        note="a minion that has had nothing to download since it started",
    )


def add_minion_pss(results: Results, fleet: Fleet, name: str, note: str = "") -> None:
    pss_mib = [pss_bytes(pid) / MIB for pid in fleet.pids.values()]
    results.add(FLEET, name, "MiB", pss_mib, target=MINION_PSS_MIB, note=note)


def run_swarm(results: Results, options: Options) -> None:
    hosts = [f"swarm-{index:04d}" for index in range(SWARM_SIZE)]
    with seeded_fleet(options, "swarm") as (fleet, servers):
        started = time.monotonic()
        swarm = fleet.start_swarm(SWARM_SIZE, "swarm")
        fleet.wait_answering(hosts, timeout_s=600)
        add_startup(
            results,
            SWARM,
            f"start-up: {SWARM_SIZE:,} swarm minions until all answer",
            started,
            note="one process; first start: keys, 2 services installed each",
        )
        measure_swarm_syncs(results, options, fleet, servers)
        measure_swarm_idle(results, options, fleet, swarm.pid)


def measure_swarm_syncs(
    results: Results, options: Options, fleet: Fleet, servers: Backends
) -> None:
    before = request_counts(servers)
    timings = rounds(
        {"swarm": functools.partial(fleet.sync_wait, "swarm-*", SWARM_SIZE)},
        runs=options.runs,
        warmup=options.warmup,
    )
    results.add(
        SWARM,
        f"no-op sync --wait, {SWARM_SIZE:,} swarm minions",
        "s",
        timings["swarm"],
        target=SWARM_FANOUT,
        note="CLI start included",
    )
    syncs = options.runs + options.warmup
    add_request_counts(results, servers, before, f"{syncs} no-op syncs, swarm")


def measure_swarm_idle(results: Results, options: Options, fleet: Fleet, swarm_pid: int) -> None:
    assert fleet.master is not None
    master_pid = fleet.master.pid
    settle_after_syncs(results, SWARM, master_pid, f"{SWARM_SIZE:,} minions")
    window_s = idle_window_s(options)
    master_share, swarm_share = cpu_shares([master_pid, swarm_pid], window_s, pause)
    results.add(
        SWARM,
        f"master idle CPU, {SWARM_SIZE:,} minions",
        "percent",
        [master_share],
        target=MASTER_IDLE_CPU,
        note=f"% of a core over {window_s:g} s (heartbeats every 5 s)",
    )
    results.add(
        SWARM,
        f"master RSS, {SWARM_SIZE:,} minions",
        "MB",
        [rss_bytes(master_pid) / 1e6],
        target=MASTER_RSS_MB,
    )
    results.add(
        SWARM,
        f"swarm process idle CPU, {SWARM_SIZE:,} minions",
        "percent",
        [swarm_share],
        note=f"{swarm_share / SWARM_SIZE:.4f} % a minion",
    )
    results.add(
        SWARM,
        f"swarm process PSS, {SWARM_SIZE:,} minions",
        "MiB",
        [pss_bytes(swarm_pid) / MIB],
        note=f"{pss_bytes(swarm_pid) / SWARM_SIZE / 1024:.0f} KiB a minion",
    )


def add_startup(
    results: Results,
    section: str,
    name: str,
    started: float,
    *,
    note: str,
    target: Target | None = None,
) -> None:
    """A start-up figure: the seconds since `started` (time.monotonic)."""
    results.add(section, name, "s", [time.monotonic() - started], target=target, note=note)


def request_counts(servers: Backends) -> tuple[int, int]:
    return servers.s3_requests(MINION_ID), servers.consul_requests(MINION_ID)


def add_request_counts(
    results: Results, servers: Backends, before: tuple[int, int], during: str
) -> None:
    s3, consul = request_counts(servers)
    results.add(
        "noop", f"S3 requests by minions: {during}", "count", [s3 - before[0]], target=NO_REQUESTS
    )
    results.add(
        "noop",
        f"Consul requests by minions: {during}",
        "count",
        [consul - before[1]],
        target=NO_REQUESTS,
    )


def add_event_bytes(results: Results, fleet: Fleet) -> None:
    """Bytes of one sync event for 1,000 patterns and 100 services: as the wire module
    encodes it, and as the master counted what it published."""
    from daybook import wire
    from daybook.model.ids import versions_digest
    from daybook.model.messages import SyncEvent
    from daybook.model.state import DesiredState

    mappings = fleet_table(MAPPINGS, PATTERNS)
    digest = versions_digest(["1"])
    state = DesiredState(mappings, {f"svc{index}": digest for index in range(SERVICES)})
    event = SyncEvent.carrying(
        wire.encode_state(state),
        epoch=int(time.time() * 1000),
        seq=1,
        sync_id=uuid.uuid4().hex,
        target="*",
        issued_at=time.time(),
    )
    encoded = sum(len(frame) for frame in wire.encode(event))
    metrics = fleet.metrics()
    events = metrics.get("daybook_published_events_total", 0.0)
    published = metrics.get("daybook_published_bytes_total", 0.0)
    note = f"{PATTERNS:,} patterns, {SERVICES} services; before CURVE's per-message overhead"
    if events:
        note += f"; the master published {published / events:,.0f} B an event on average"
    results.add(
        "noop", "sync event bytes per minion", "bytes", [encoded], target=EVENT_BYTES, note=note
    )
