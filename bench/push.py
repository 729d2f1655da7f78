"""A push reaching the fleet: `daybook push` of a small asset until every minion has it
installed, with no operator command; and what each install costs a host in CPU.

Side by side, each on its own fleet: minions downloading through the URLs the master signs
(the default: no credentials, the install in the minion itself), and minions reading the
bucket with their own credentials in an install child (`signed_downloads = false`).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bench.assets import AssetSpec, write_archive
from bench.fleet import BUCKET, KEY_PREFIX, OPERATOR_ID, Fleet, backends, identity, pause, running
from bench.procstat import children_cpu_seconds, cpu_seconds
from bench.results import Results, Target
from bench.s3 import create_bucket
from bench.timing import Options, run_checked

SECTION = "push"
# From the signed-downloads issue.
PUSH_REACHES_FLEET = Target(1.0)
CHILD_CPU = Target(0.05)
MODES = {"signed URLs": "true", "own credentials": "false"}
SIZES = (3, 20)
POLL_S = 0.005


def run(results: Results, options: Options) -> None:
    for size in SIZES:
        for mode, signed in MODES.items():
            with pushing_fleet(options, size, signed) as fleet:
                measure_pushes(results, options, fleet, size, mode)


@contextmanager
def pushing_fleet(options: Options, size: int, signed: str) -> Iterator[Fleet]:
    """A master and `size` minions mapped to the fleet's service, with version 0 installed."""
    with backends(options) as servers:
        create_bucket(servers.s3, BUCKET)
        fleet = Fleet(options, servers, f"push-{size}-{signed}")
        with running(fleet):
            servers.consul.put(KEY_PREFIX + "push-*", service_of(fleet))
            fleet.start_master()
            push(options, fleet, 0)
            hosts = [f"push-{index:02d}" for index in range(size)]
            for host in hosts:
                fleet.start_minion(host, DAYBOOK_SIGNED_DOWNLOADS=signed)
            fleet.wait_answering(hosts, timeout_s=120)
            wait_installed(fleet, 0)
            yield fleet


def measure_pushes(results: Results, options: Options, fleet: Fleet, size: int, mode: str) -> None:
    reach: list[float] = []
    own_cpu: list[float] = []
    child_cpu: list[float] = []
    for version in range(1, options.runs + 1):
        before = {host: cpu(proc.pid) for host, proc in fleet.minions.items()}
        reach.append(push(options, fleet, version))
        # The version's directory is in place a moment before its child exits and is
        # counted: wait for the children, untimed.
        wait_childless(fleet)
        after = {host: cpu(proc.pid) for host, proc in fleet.minions.items()}
        own_cpu.append(sum(after[h][0] - before[h][0] for h in after) / size)
        child_cpu.append(sum(after[h][1] - before[h][1] for h in after) / size)
    results.add(
        SECTION,
        f"push reaches {size} minions, {mode}",
        "s",
        reach,
        target=PUSH_REACHES_FLEET,
        note="from the push command's start to installed everywhere; no operator",
    )
    results.add(
        SECTION,
        f"install child CPU per host and push, {size} minions, {mode}",
        "s",
        child_cpu,
        target=CHILD_CPU,
        note="0: no child, the minion installs itself",
    )
    results.add(
        SECTION,
        f"minion CPU per host and push, {size} minions, {mode}",
        "s",
        own_cpu,
        note="the minion process itself: event, install if in-process, report",
    )


def push(options: Options, fleet: Fleet, version: int) -> float:
    """Seconds from `daybook push` of `version` to the version installed on every minion."""
    spec = AssetSpec(service_of(fleet), str(version), (2000,), files_per_dir=1, seed=version)
    path = options.workdir / spec.filename
    with path.open("wb") as raw:
        write_archive(spec, raw)
    env = fleet.env(
        **identity(OPERATOR_ID), DAYBOOK_DATA_DIR=str(fleet.master_dir), **fleet.port_env()
    )
    start = time.perf_counter()
    run_checked([str(options.daybook), "push", str(path)], env)
    wait_installed(fleet, version)
    return time.perf_counter() - start


def service_of(fleet: Fleet) -> str:
    """A service of each fleet's own: the S3 servers of one run share moto's memory."""
    return "pushed_" + fleet.root.name.replace("-", "_")


def installed(fleet: Fleet, version: int) -> bool:
    service = service_of(fleet)
    return all(
        (fleet.root / host / "install" / service / str(version)).is_dir() for host in fleet.minions
    )


def cpu(pid: int) -> tuple[float, float]:
    """A process's own CPU seconds, and those of the children it has waited for."""
    return cpu_seconds(pid), children_cpu_seconds(pid)


def wait_installed(fleet: Fleet, version: int, timeout_s: float = 60.0) -> None:
    """Polled finely: the figure is well under a second, and a coarse poll would pad it."""
    deadline = time.monotonic() + timeout_s
    while not installed(fleet, version):
        if time.monotonic() > deadline:
            raise RuntimeError(f"version {version} not installed everywhere in {timeout_s:g} s")
        pause(POLL_S)


def wait_childless(fleet: Fleet, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while any(has_children(proc.pid) for proc in fleet.minions.values()):
        if time.monotonic() > deadline:
            raise RuntimeError(f"install children still running after {timeout_s:g} s")
        pause(POLL_S)


def has_children(pid: int) -> bool:
    tasks = Path(f"/proc/{pid}/task")
    return any((task / "children").read_text().strip() for task in tasks.iterdir())
