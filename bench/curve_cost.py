"""The cost of CURVE: `daybook sync --wait` round trips to N minion processes, with the
transport secured (the default) and with `insecure_transport = true` (benchmarks only).

    python -m bench.curve_cost [--minions 20] [--runs 9] [--rounds 3]

Each mode gets a fresh local fleet on 127.0.0.1: a master, N minion processes, the embedded
file store and registry, one mapped asset that every minion already has after the first
sync, so each timed sync is a no-op whose time is the transport's round trip (publish, plan
from digests, report). The operator asks through the master's local socket, as the CLI does
on the master's host, so the figures differ only in the master-minion legs. Reported: the
in-process round trip (ControlClient.run_sync) and the whole `daybook sync --wait` command.
The modes take turns over several rounds, each with a fresh fleet, so that a busy machine
weighs on both alike.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

from daybook.errors import FleetError
from daybook.model.names import AssetRef
from daybook.net.client import ControlClient
from daybook.net.endpoints import MasterEndpoints, read_endpoints
from daybook.registry.base import open_registry
from daybook.store.local import LocalStore

CONFIG = """
bind = "127.0.0.1"
splay_s = 0.0
heartbeat_interval_s = 1.0
republish_interval_s = 30.0
down_after_s = 15.0
"""
DEADLINE_S = 120.0


def wait_for(condition: Callable[[], Any], what: str) -> Any:
    deadline = time.monotonic() + DEADLINE_S
    pause = threading.Event()
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise SystemExit(f"curve_cost: timed out waiting for {what}")
        pause.wait(0.05)
    return value


def _asset(root: Path) -> Path:
    path = root / "web-1.tar.gz"
    with tarfile.open(path, "w:gz") as archive:
        data = b"#!/bin/sh\necho web\n"
        info = tarfile.TarInfo("bin/run")
        info.size, info.mode = len(data), 0o755
        archive.addfile(info, io.BytesIO(data))
    return path


class LocalFleet:
    def __init__(self, root: Path, minions: int, *, insecure: bool) -> None:
        self.root = root
        self.hosts = [f"bench-{index:02d}" for index in range(minions)]
        self._logs: list[IO[bytes]] = []
        self._processes: list[subprocess.Popen[bytes]] = []
        store = LocalStore(root / "store")
        path = _asset(root)
        store.upload(
            path, AssetRef("web", "1"), sha256=hashlib.sha256(path.read_bytes()).hexdigest()
        )
        open_registry(f"file://{root / 'mappings.json'}").update("bench-*", lambda _: ("web",))
        (root / "daybook.toml").write_text(CONFIG)
        self._env = {k: v for k, v in os.environ.items() if not k.startswith("DAYBOOK_")}
        self._env.update(
            DAYBOOK_CONFIG=str(root / "daybook.toml"),
            DAYBOOK_STORE=store.url,
            DAYBOOK_REGISTRY=f"file://{root / 'mappings.json'}",
        )
        if insecure:
            self._env["DAYBOOK_INSECURE_TRANSPORT"] = "1"
        self.master_dir = root / "master"

    def _spawn(self, name: str, command: str, **env: str) -> subprocess.Popen[bytes]:
        log = (self.root / f"{name}.log").open("wb")
        self._logs.append(log)
        process = subprocess.Popen(
            [sys.executable, "-m", "daybook", "-v", command],
            env={**self._env, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self._processes.append(process)
        return process

    def start(self) -> None:
        master = self._spawn(
            "master",
            "master",
            DAYBOOK_DATA_DIR=str(self.master_dir),
            DAYBOOK_HOSTNAME="master",
            DAYBOOK_PORT="0",
            DAYBOOK_AUTO_ACCEPT="1",
        )

        def endpoints() -> MasterEndpoints | None:
            if master.poll() is not None:
                raise SystemExit(f"curve_cost: the master died; see {self.root}/master.log")
            try:
                written = read_endpoints(self.master_dir)
            except FleetError:
                return None
            return written if written.pid == master.pid else None

        announced = wait_for(endpoints, "the master")
        self.local = announced.endpoints["local"]
        ports = {
            "DAYBOOK_PORT" if role == "publish" else f"DAYBOOK_{role.upper()}_PORT": str(port)
            for role, port in announced.ports.items()
        }
        for host in self.hosts:
            self._spawn(
                host,
                "minion",
                DAYBOOK_DATA_DIR=str(self.root / host),
                DAYBOOK_HOSTNAME=host,
                **ports,
            )
        with ControlClient(self.local) as client:
            wait_for(
                lambda: all(
                    (entry := client.fleet_status().hosts.get(host)) is not None
                    and entry.up
                    and entry.last_report is not None
                    for host in self.hosts
                ),
                f"{len(self.hosts)} minions up and synced",
            )

    def sync_in_process(self) -> float:
        with ControlClient(self.local, timeout_s=30.0) as client:
            started = time.perf_counter()
            summary = client.run_sync(None, wait=True, timeout_s=30.0)
            elapsed = time.perf_counter() - started
        if not summary.ok or len(summary.results) != len(self.hosts):
            raise SystemExit(f"curve_cost: a sync did not complete: missing {summary.missing}")
        return elapsed

    def sync_command(self) -> float:
        started = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "daybook", "sync", "--wait", "--json"],
            env={**self._env, "DAYBOOK_DATA_DIR": str(self.master_dir), "DAYBOOK_PORT": "0"},
            capture_output=True,
            check=False,
        )
        elapsed = time.perf_counter() - started
        if done.returncode != 0:
            raise SystemExit(f"curve_cost: daybook sync failed: {done.stderr.decode()}")
        return elapsed

    def stop(self) -> None:
        for process in self._processes[1:] + self._processes[:1]:  # minions first
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self._processes:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for log in self._logs:
            log.close()


def measure(minions: int, runs: int, *, insecure: bool) -> dict[str, list[float]]:
    with tempfile.TemporaryDirectory(prefix="daybook-curve-") as temp:
        fleet = LocalFleet(Path(temp), minions, insecure=insecure)
        try:
            fleet.start()
            fleet.sync_in_process()  # warm-up: every connection made, every state decoded
            return {
                "round trip (in process)": [fleet.sync_in_process() for _ in range(runs)],
                "daybook sync --wait (command)": [fleet.sync_command() for _ in range(runs)],
            }
        finally:
            fleet.stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.curve_cost", description=__doc__)
    parser.add_argument("--minions", type=int, default=20)
    parser.add_argument("--runs", type=int, default=9, help="timed syncs per fleet")
    parser.add_argument("--rounds", type=int, default=3, help="fresh fleets per mode")
    args = parser.parse_args(argv)
    figures: dict[str, dict[str, list[float]]] = {"curve": {}, "insecure": {}}
    for round_number in range(args.rounds):
        order = ("curve", "insecure") if round_number % 2 == 0 else ("insecure", "curve")
        for mode in order:
            found = measure(args.minions, args.runs, insecure=mode == "insecure")
            for name, values in found.items():
                figures[mode].setdefault(name, []).extend(values)
    total = args.runs * args.rounds
    print(f"no-op sync to {args.minions} minion processes, {total} syncs per mode (ms)")
    print(f"{'figure':<32} {'mode':<9} {'median':>8} {'min':>8} {'max':>8}")
    for name in figures["curve"]:
        for mode, found in figures.items():
            values = [1000 * v for v in found[name]]
            print(
                f"{name:<32} {mode:<9} {statistics.median(values):>8.1f} "
                f"{min(values):>8.1f} {max(values):>8.1f}"
            )
    print(json.dumps({"minions": args.minions, "syncs": total, "seconds": figures}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
