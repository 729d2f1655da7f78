"""A local fleet for the bench: counted S3 and Consul servers, a real master, minion
processes or a swarm, and the operator's `daybook sync --wait`.

Minions get their own S3 access key and Consul token, so the servers count their requests
apart from the master's. Every process is started here and stopped here, by its pid.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from bench.assets import AssetSpec, write_archive
from bench.s3 import S3Server, create_bucket, moto_server
from bench.timing import Options, run_checked
from daybook_testing.consul_server import ConsulServer

BUCKET = "fleet"
KEY_PREFIX = "daybook/hosts/"
# Identities the servers count by: S3 access key ids and Consul tokens.
MASTER_ID = "master"
MINION_ID = "minion"
OPERATOR_ID = "operator"
# The master binds loopback only; everything else is the embedded default, as shipped.
CONFIG = 'bind = "127.0.0.1"\n'
SERVICES = 100
PATTERNS = 1000


@dataclass
class Backends:
    s3: S3Server
    consul: ConsulServer

    @property
    def consul_address(self) -> str:
        return self.consul.address

    def s3_requests(self, identity: str) -> int:
        return self.s3.requests.count(identity)

    def consul_requests(self, token: str) -> int:
        return sum(
            1
            for request in self.consul.request_log
            if request.header("X-Consul-Token") == token or request.query.get("token") == [token]
        )


def consul_double() -> ConsulServer:
    """The Consul-KV-compatible server the tests use (the bench runs in the dev venv)."""
    # Consul's own query-time defaults, so the master's blocking watch costs what it would.
    return ConsulServer()


@contextmanager
def backends(options: Options) -> Iterator[Backends]:
    with ExitStack() as stack:
        s3 = stack.enter_context(moto_server(options.workdir))
        consul = consul_double().start()
        stack.callback(consul.stop)
        yield Backends(s3, consul)


def fleet_table(
    hosts_patterns: dict[str, tuple[str, ...]], size: int
) -> dict[str, tuple[str, ...]]:
    """`size` patterns: the given ones (for the fleet's own hosts) and realistic others."""
    from bench.pattern_scale import random_pattern

    rng = random.Random(5)
    table = dict(hosts_patterns)
    while len(table) < size:
        services = tuple(
            sorted({f"svc{rng.randrange(SERVICES)}" for _ in range(rng.randrange(1, 4))})
        )
        table.setdefault(random_pattern(rng), services)
    return table


def seed_backends(
    backends: Backends, options: Options, mappings: dict[str, tuple[str, ...]]
) -> None:
    """One small version of each of SERVICES services in the store; `mappings` in Consul."""
    create_bucket(backends.s3, BUCKET)
    assets = options.workdir / "fleet-assets"
    assets.mkdir(parents=True, exist_ok=True)
    files = []
    for index in range(SERVICES):
        spec = AssetSpec(f"svc{index}", "1", (2000,), files_per_dir=1, seed=index)
        path = assets / spec.filename
        with path.open("wb") as raw:
            write_archive(spec, raw)
        files.append(str(path))
    env = dict(backends.s3.env, AWS_ACCESS_KEY_ID=OPERATOR_ID, DAYBOOK_STORE=f"s3://{BUCKET}")
    env["DAYBOOK_DATA_DIR"] = str(options.workdir / "operator")
    run_checked([str(options.daybook), "push", *files], env)
    for pattern, services in mappings.items():
        backends.consul.put(KEY_PREFIX + pattern, ",".join(services))


class Fleet:
    """One master with its minions, in `root`."""

    def __init__(self, options: Options, backends: Backends, name: str) -> None:
        self.options = options
        self.backends = backends
        self.root = options.workdir / name
        self.root.mkdir(parents=True)
        self.config = self.root / "daybook.toml"
        self.config.write_text(CONFIG)
        self.master_dir = self.root / "master"
        self.master: subprocess.Popen[bytes] | None = None
        self.minions: dict[str, subprocess.Popen[bytes]] = {}
        self.swarms: list[subprocess.Popen[bytes]] = []
        self.ports: dict[str, int] = {}
        self.http_port = 0
        self._logs: list[IO[bytes]] = []
        self._client: Any = None
        self._pause = threading.Event()

    # -- processes --------------------------------------------------------------------------

    def env(self, identity: str, **extra: str) -> dict[str, str]:
        env = dict(self.backends.s3.env)
        env.update(
            AWS_ACCESS_KEY_ID=identity,
            CONSUL_HTTP_TOKEN=identity,
            DAYBOOK_CONFIG=str(self.config),
            DAYBOOK_STORE=f"s3://{BUCKET}",
            DAYBOOK_REGISTRY=f"consul://{self.backends.consul_address}",
        )
        env.update(extra)
        return env

    def _spawn(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        log = (self.root / f"{name}.log").open("wb")
        self._logs.append(log)
        return subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)

    def start_master(self, timeout_s: float = 60.0) -> None:
        from daybook.net.client import ControlClient

        env = self.env(
            MASTER_ID,
            DAYBOOK_DATA_DIR=str(self.master_dir),
            DAYBOOK_HOSTNAME="bench-master",
            DAYBOOK_PORT="0",
            DAYBOOK_AUTO_ACCEPT="1",
        )
        master = self.master = self._spawn("master", [str(self.options.daybook), "master"], env)
        path = self.master_dir / "master.json"

        def started() -> dict[str, Any] | None:
            if master.poll() is not None:
                raise RuntimeError(f"the master exited: see {self.root / 'master.log'}")
            try:
                document: dict[str, Any] = json.loads(path.read_text())
            except (FileNotFoundError, ValueError):
                return None
            return document if document.get("pid") == master.pid else None

        document = self.wait_for(started, "the master's master.json", timeout_s)
        self.ports = document["ports"]
        self.http_port = int(self.ports.get("http", 0))
        self._client = ControlClient(document["endpoints"]["local"], timeout_s=30.0)

    def minion_env(self, host: str, data_dir: Path) -> dict[str, str]:
        return self.env(
            MINION_ID,
            DAYBOOK_DATA_DIR=str(data_dir),
            DAYBOOK_HOSTNAME=host,
            DAYBOOK_PORT=str(self.ports["publish"]),
            DAYBOOK_RESULTS_PORT=str(self.ports["results"]),
            DAYBOOK_CONTROL_PORT=str(self.ports["control"]),
            DAYBOOK_KEY_PORT=str(self.ports.get("key", 0)),
        )

    def start_minions(self, hosts: Sequence[str]) -> None:
        for host in hosts:
            env = self.minion_env(host, self.root / "minions" / host)
            runs = sum(1 for path in self.root.glob(f"{host}*.log"))
            name = host if runs == 0 else f"{host}.{runs + 1}"
            self.minions[host] = self._spawn(name, [str(self.options.daybook), "minion"], env)

    def stop_minions(self) -> None:
        processes = list(self.minions.values())
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(20.0)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.minions.clear()

    def start_swarm(self, count: int, prefix: str) -> subprocess.Popen[bytes]:
        env = self.minion_env(f"{prefix}-host", self.root / "swarm")
        argv = [sys.executable, "-m", "minion.swarm", "--count", str(count), "--prefix", prefix]
        swarm = self._spawn(f"swarm-{prefix}", argv, env)
        self.swarms.append(swarm)
        return swarm

    def stop(self) -> None:
        """SIGTERM every process started here (minions first), then SIGKILL what lingers."""
        children = [*self.minions.values(), *self.swarms]
        for group in (children, [self.master] if self.master else []):
            for process in group:
                if process.poll() is None:
                    process.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + 20.0
            for process in group:
                try:
                    process.wait(max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        if self._client is not None:
            self._client.close()
            self._client = None
        for log in self._logs:
            log.close()

    # -- observing ---------------------------------------------------------------------------

    def wait_for(self, condition: Callable[[], Any], what: str, timeout_s: float) -> Any:
        deadline = time.monotonic() + timeout_s
        while True:
            value = condition()
            if value:
                return value
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out after {timeout_s:g} s waiting for {what}")
            self._pause.wait(0.05)

    def status(self) -> Any:
        """The master's FleetStatus, through its local operator socket."""
        return self._client.fleet_status()

    def answering(self, hosts: Sequence[str]) -> bool:
        """Every host is up and has reported at least once."""
        swarms = ((f"swarm {swarm.pid}", swarm) for swarm in self.swarms)
        for name, process in [*self.minions.items(), *swarms]:
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited: see the logs in {self.root}")
        entries = self.status().hosts
        return all(
            host in entries and entries[host].up and entries[host].last_report is not None
            for host in hosts
        )

    def booted(self, boot_ids: dict[str, str | None]) -> bool:
        """Every host is up again under a boot id other than the one given."""
        entries = self.status().hosts
        return all(
            host in entries and entries[host].up and entries[host].boot_id != old
            for host, old in boot_ids.items()
        )

    def sync_in_process(self, target: str, expected: int) -> float:
        """Wall time of a no-op sync --wait from an operator client already connected."""
        start = time.perf_counter()
        summary = self._client.run_sync(target, wait=True, timeout_s=60.0)
        elapsed = time.perf_counter() - start
        if len(summary.results) != expected or not summary.ok:
            raise RuntimeError(
                f"sync of {target}: {len(summary.results)}/{expected} answered, "
                f"missing {list(summary.missing)}"
            )
        return elapsed

    def wait_answering(self, hosts: Sequence[str], timeout_s: float) -> float:
        """Seconds until every host answers."""
        start = time.monotonic()
        self.wait_for(lambda: self.answering(hosts), f"{len(hosts)} minions to answer", timeout_s)
        return time.monotonic() - start

    def sync_wait(self, target: str, expected: int) -> float:
        """Wall time of `daybook sync --wait --target TARGET`, checked to be a full success."""
        env = self.env(OPERATOR_ID, DAYBOOK_DATA_DIR=str(self.master_dir), DAYBOOK_PORT="0")
        argv = [str(self.options.daybook), "sync", "--wait", "--json", "--target", target]
        start = time.perf_counter()
        done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
        elapsed = time.perf_counter() - start
        try:
            document = json.loads(done.stdout)
        except ValueError:
            document = {}
        answered = len(document.get("results", {}))
        if done.returncode != 0 or answered != expected or not document.get("ok"):
            raise RuntimeError(
                f"sync --target {target}: exit {done.returncode}, {answered}/{expected} "
                f"answered, missing {document.get('missing')}: {done.stderr.strip()[-500:]}"
            )
        return elapsed

    def metrics(self) -> dict[str, float]:
        """The master's Prometheus metrics, unlabelled sums by name."""
        import urllib.request

        url = f"http://127.0.0.1:{self.http_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read().decode()
        totals: dict[str, float] = {}
        for line in text.splitlines():
            if not line or line.startswith("#"):
                continue
            name_part, _, value = line.rpartition(" ")
            name = name_part.split("{", 1)[0]
            try:
                totals[name] = totals.get(name, 0.0) + float(value)
            except ValueError:
                continue
        return totals

    @property
    def pids(self) -> dict[str, int]:
        return {host: process.pid for host, process in self.minions.items()}


@contextmanager
def running(fleet: Fleet) -> Iterator[Fleet]:
    try:
        yield fleet
    finally:
        fleet.stop()


def idle_window_s(options: Options) -> float:
    return 5.0 if options.quick else 15.0


def pause(seconds: float) -> None:
    """Let time pass for a measurement window (idle CPU), not to wait for a condition."""
    threading.Event().wait(seconds)
