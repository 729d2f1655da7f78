"""One master for 10,000 minions: several swarm processes against one real master.

Measured in one master's life: idle CPU and RSS with the first 1,000 minions, then with all
of them; no-op `sync --wait` round trips of the whole fleet; and after a SIGKILL of the
master and its restart on the same ports, how long until every minion is shown up again,
and until a sync of the whole fleet is answered by all.

The master holds two TCP connections a minion (events and reports), so it needs an
open-file limit above twice the fleet. The bench raises its own soft limit to the hard one
(its children inherit it); where even the hard limit is too low, the fleet is made as large
as it allows and every figure says so.
"""

from __future__ import annotations

import functools
import resource
import time
from collections.abc import Iterable

from bench.fleet import Fleet, backends, fleet_table, pause, running, seed_backends
from bench.fleet_bench import MAPPINGS
from bench.procstat import cpu_shares, rss_bytes
from bench.results import Results, Target, Unit
from bench.timing import Options, rounds
from daybook.model.fleet import HostStatus
from daybook_testing.heapscan import scan
from daybook_testing.waiting import wait_for

SECTION = "swarm10k"
FIRST = 1000
# The master's own descriptors besides one a connection: database, sockets, HTTP, logs.
MASTER_SPARE_FDS = 100
# A tenth of the limit kept spare: in the reconnect storm after a restart a minion's old
# connection may not be closed yet when its new one is accepted, and out of descriptors,
# libzmq 4.3.5 aborts the whole process when the operators' local (ipc) socket accepts.
FD_HEADROOM = 0.1
# Minions a swarm process runs: its own limit is the same as the master's, six or so
# descriptors a minion, and a process a core keeps the swarms' heartbeats on time.
PER_SWARM = 2500
PREFIX = "scale"
# From the speed issue.
IDLE_CPU_1K = Target(1.0)
RSS_1K_MB = Target(150.0)
IDLE_CPU_10K = Target(5.0)
RSS_10K_MB = Target(1000.0)
SYNC_10K = Target(3.0)
RESTART_10K = Target(60.0)
# Fleet status polls: each is a request for every host's status, not free at 10,000.
STATUS_POLL_S = 1.0
IDLE_WINDOW_S = 5.0


def raise_open_files(wanted: int) -> int:
    """Raise this process's soft open-file limit towards `wanted`, up to the hard limit;
    the limit now in force (the master and swarms started from here inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


def fleet_size(wanted: int, fd_limit: int) -> int:
    """As many of `wanted` minions as the master's open-file limit lets it hold, in hundreds."""
    fits = (int(fd_limit * (1 - FD_HEADROOM)) - MASTER_SPARE_FDS) // 2
    return wanted if fits >= wanted else max(FIRST, fits // 100 * 100)


def swarm_counts(size: int) -> list[int]:
    """The first swarm runs FIRST minions; the rest are split in processes of PER_SWARM."""
    counts = [min(FIRST, size)]
    left = size - counts[0]
    while left > 0:
        counts.append(min(PER_SWARM, left))
        left -= counts[-1]
    return counts


def run(results: Results, options: Options) -> None:
    wanted = options.swarm_size
    needed = int((2 * wanted + MASTER_SPARE_FDS) / (1 - FD_HEADROOM)) + 1
    limit = raise_open_files(needed)
    size = fleet_size(wanted, limit)
    limit_note = f"open files {limit:,}"
    if size < wanted:
        limit_note += f": too few for {wanted:,} minions, measured {size:,}"
        print(
            f"# swarm10k: the open-file hard limit ({limit:,}) is too low for {wanted:,} "
            f"minions (about {needed:,} needed, a tenth spare); running {size:,}"
        )
    mappings = fleet_table({**MAPPINGS, f"{PREFIX}*": ("svc0",)}, 1000)
    with backends(options) as servers:
        seed_backends(servers, options, mappings)
        fleet = Fleet(options, servers, SECTION)
        with running(fleet):
            fleet.start_master()
            scale_fleet(results, options, fleet, size, limit_note)


def scale_fleet(
    results: Results, options: Options, fleet: Fleet, size: int, limit_note: str
) -> None:
    counts = swarm_counts(size)
    started = time.monotonic()
    fleet.start_swarm(counts[0], f"{PREFIX}0")
    wait_all(fleet, counts[0], ready=True, timeout_s=1200)
    add(
        results,
        f"start-up: first {counts[0]:,} minions until all answer",
        "s",
        [time.monotonic() - started],
        note="one swarm process; keys made, 1 service each",
    )
    measure_idle(results, fleet, counts[0], cpu=IDLE_CPU_1K, rss=RSS_1K_MB, windows=options.runs)
    started = time.monotonic()
    events = published_events(fleet)
    for index, count in enumerate(counts[1:], start=1):
        fleet.start_swarm(count, f"{PREFIX}{index}")
    wait_all(fleet, size, ready=True, timeout_s=3600)
    add(
        results,
        f"start-up: {size - counts[0]:,} more minions until all answer",
        "s",
        [time.monotonic() - started],
        note=f"{len(counts) - 1} swarm processes, {published_events(fleet) - events:g} events "
        f"published meanwhile; {limit_note}",
    )
    try:
        timings = rounds(
            {"sync": functools.partial(fleet.sync_wait, f"{PREFIX}*", size)},
            runs=options.runs,
            warmup=options.warmup,
        )["sync"]
        note = "the daybook command, start-up included"
    except RuntimeError as exc:
        # Reported, not raised: the idle and restart figures are still worth having.
        print(f"# swarm10k: sync --wait of {size:,} failed: {exc}")
        assert fleet.master is not None
        print(fleet.master.tail(20))
        timings, note = [], f"FAILED: {str(exc)[:120]}"
    add(
        results,
        f"no-op sync --wait, {size:,} swarm minions",
        "s",
        timings,
        target=SYNC_10K,
        note=note,
    )
    measure_idle(results, fleet, size, cpu=IDLE_CPU_10K, rss=RSS_10K_MB, windows=options.runs)
    measure_restart(results, fleet, size)


def measure_idle(
    results: Results, fleet: Fleet, size: int, *, cpu: Target, rss: Target, windows: int
) -> None:
    """The master's CPU over `windows` windows after it has settled, and its RSS after each."""
    assert fleet.master is not None
    pid = fleet.master.pid
    # The master reads heartbeats in batches once nothing was published for a while.
    pause(6.0)
    shares: list[float] = []
    sizes: list[float] = []
    for _ in range(max(2, windows)):
        shares.extend(cpu_shares([pid], IDLE_WINDOW_S, pause))
        sizes.append(rss_bytes(pid) / 1e6)
    # The interval the master asks of a fleet this size (see Running a large fleet).
    pace_s = fleet.metrics().get("daybook_heartbeat_interval_seconds", 0.0)
    add(
        results,
        f"master idle CPU, {size:,} minions",
        "percent",
        shares,
        target=cpu,
        note=f"% of a core, {IDLE_WINDOW_S:g} s windows; heartbeats every {pace_s:g} s",
    )
    add(results, f"master RSS, {size:,} minions", "MB", sizes, target=rss)
    add_memory_by_kind(results, pid, size)
    swarms = sum(rss_bytes(swarm.pid) for swarm in fleet.swarms) / 1e6
    add(
        results,
        f"swarm processes' RSS, {size:,} minions",
        "MB",
        [swarms],
        note=f"{swarms * 1000 / size:.0f} kB a minion",
    )


def published_events(fleet: Fleet) -> float:
    """How many sync events the master has published (catch-ups for minions that start
    behind, among them)."""
    return fleet.metrics().get("daybook_published_events_total", 0.0)


def add_memory_by_kind(results: Results, pid: int, size: int) -> None:
    """What the master's resident memory is: glibc's arenas, the blocks it mapped on pages of
    their own, the rest (the profile a missed RSS target needs)."""
    try:
        heap = scan(pid)
    except OSError as exc:
        print(f"# {SECTION}: cannot read the master's memory map: {exc}")
        return
    sizes = ", ".join(
        f"{kind.count:,} of {kind.size // 1024} KiB, {kind.resident_bytes / kind.count / 1024:.1f} "
        "KiB resident each"
        for kind in heap.blocks[:2]
    )
    add(
        results,
        f"master RSS in thread arenas, {size:,} minions",
        "MB",
        [heap.arena_bytes / 1e6],
        note="libzmq's I/O thread: small objects, and large blocks carved from free space",
    )
    add(
        results,
        f"master RSS in mapped blocks, {size:,} minions",
        "MB",
        [heap.mapped_bytes / 1e6],
        note=f"{sizes}; {heap.mappings:,} mappings in all",
    )
    add(
        results,
        f"master RSS, main heap and other anonymous, {size:,} minions",
        "MB",
        [(heap.main_heap_bytes + heap.other_bytes) / 1e6],
        note="Python's objects and arenas, thread stacks",
    )


def measure_restart(results: Results, fleet: Fleet, size: int) -> None:
    """SIGKILL the master, start it again on the same ports: until all are shown up, and
    until a sync of the whole fleet is answered by every minion."""
    assert fleet.master is not None
    fleet.master.kill()
    started = time.monotonic()
    killed_at = time.time()
    fleet.start_master(same_ports=True, timeout_s=120)
    listening = time.monotonic() - started
    # The restarted master loads every host's last status: up only once heard from again.
    wait_all(fleet, size, ready=False, timeout_s=600, heard_since=killed_at)
    up = time.monotonic() - started
    fleet.sync_in_process(f"{PREFIX}*", size)
    answering = time.monotonic() - started
    add(
        results,
        f"master SIGKILL + restart: all {size:,} shown up",
        "s",
        [up],
        note=f"listening again after {listening:.1f} s",
    )
    add(
        results,
        f"master SIGKILL + restart: all {size:,} up and answering",
        "s",
        [answering],
        target=RESTART_10K,
        note="until a sync of the whole fleet is answered by every minion",
    )


def wait_all(
    fleet: Fleet, size: int, *, ready: bool, timeout_s: float, heard_since: float = 0.0
) -> None:
    """Until `size` of the bench's minions are shown up, heard from since `heard_since`
    (wall clock), and with `ready` have reported."""

    def done() -> bool:
        for swarm in fleet.swarms:
            fleet.check_alive(swarm)
        hosts = fleet.status().hosts.values()
        return count_up(hosts, ready=ready, heard_since=heard_since) >= size

    what = f"{size:,} minions {'to answer' if ready else 'shown up'}"
    wait_for(done, what, timeout_s, error=RuntimeError, poll_s=STATUS_POLL_S)


def count_up(hosts: Iterable[HostStatus], *, ready: bool, heard_since: float) -> int:
    return sum(
        1
        for entry in hosts
        if entry.host.startswith(PREFIX)
        and entry.up
        and entry.last_seen >= heard_since
        and (not ready or entry.last_report is not None)
    )


def add(
    results: Results,
    name: str,
    unit: Unit,
    values: list[float],
    *,
    target: Target | None = None,
    note: str = "",
) -> None:
    results.add(SECTION, name, unit, values, target=target, note=note)
