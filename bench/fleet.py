"""A local fleet for the bench: counted S3 and Consul servers, a real master, minion
processes or a swarm, and the operator's `daybook sync --wait`.

Minions get their own S3 access key and Consul token, so the servers count their requests
apart from the master's. The processes are the tests' own (daybook_testing.fleet), run
by the installed daybook command, each stopped by its pid.
"""

from __future__ import annotations

import json
import random
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

from bench.assets import AssetSpec, write_archive
from bench.s3 import S3Server, create_bucket, moto_server
from bench.timing import Options, run_checked
from daybook_testing import fleet as harness
from daybook_testing.consul_server import ConsulServer
from daybook_testing.processes import Proc, stop_together

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
# Stopping 100 minions at once takes a while on a small machine.
STOP_TIMEOUT_S = 20.0
# Polled less often than in tests: the polls are requests to the master being measured.
POLL_S = 0.05


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


@contextmanager
def backends(options: Options) -> Iterator[Backends]:
    with ExitStack() as stack:
        s3 = stack.enter_context(moto_server(options.workdir))
        # Consul's own query-time defaults, so the master's blocking watch costs what it would.
        consul = stack.enter_context(ConsulServer())
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


def identity(name: str) -> dict[str, str]:
    """The S3 access key id and Consul token the servers count a process's requests by."""
    return {"AWS_ACCESS_KEY_ID": name, "CONSUL_HTTP_TOKEN": name}


class Fleet(harness.Fleet):
    """One master with its minions, in `options.workdir / name`, run by the daybook
    command as installed."""

    def __init__(self, options: Options, backends: Backends, name: str) -> None:
        root = options.workdir / name
        root.mkdir(parents=True)
        super().__init__(
            root,
            command=[str(options.daybook)],
            config=CONFIG,
            store_url=f"s3://{BUCKET}",
            registry_url=f"consul://{backends.consul_address}",
            base_env=backends.s3.env,
            error=RuntimeError,
            poll_s=POLL_S,
            client_timeout_s=30.0,
            stop_timeout_s=STOP_TIMEOUT_S,
        )
        self.options = options
        self.backends = backends

    @property
    def http_port(self) -> int:
        return int(self.ports.get("http", 0))

    def start_master(
        self,
        *,
        same_ports: bool = False,
        hostname: str = "bench-master",
        timeout_s: float = 60.0,
        **extra: str,
    ) -> Proc:
        return super().start_master(
            same_ports=same_ports,
            hostname=hostname,
            timeout_s=timeout_s,
            **identity(MASTER_ID),
            **extra,
        )

    def start_minion(
        self,
        host: str,
        *,
        wrap: Sequence[str] = (),
        set_hostname: bool = True,
        without: Sequence[str] = (),
        **extra: str,
    ) -> Proc:
        return super().start_minion(
            host,
            wrap=wrap,
            set_hostname=set_hostname,
            without=without,
            **identity(MINION_ID),
            **extra,
        )

    def start_minions(self, hosts: Sequence[str]) -> None:
        for host in hosts:
            self.start_minion(host)

    def start_swarm(self, count: int, prefix: str, **extra: str) -> Proc:
        return super().start_swarm(count, prefix, **identity(MINION_ID), **extra)

    def stop_minions(self) -> None:
        stop_together(self.minions.values(), STOP_TIMEOUT_S)
        self.minions.clear()

    # -- observing ---------------------------------------------------------------------------

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
        summary = self.client.run_sync(target, wait=True, timeout_s=60.0)
        elapsed = time.perf_counter() - start
        if len(summary.results) != expected or not summary.ok:
            raise RuntimeError(
                f"sync of {target}: {len(summary.results)}/{expected} answered, "
                f"missing {list(summary.missing)}"
            )
        return elapsed

    def rolling_sync_in_process(self, target: str, expected: int, batch: str) -> float:
        """Wall time of a no-op rolling sync --wait in batches of `batch`, from an operator
        client already connected: every batch must complete."""
        start = time.perf_counter()
        summary, rollout = self.client.run_rollout(
            target, batch=batch, max_failures=0, batch_wait_s=0.0, wait=True, timeout_s=60.0
        )
        elapsed = time.perf_counter() - start
        if rollout.state != "complete" or len(summary.results) != expected:
            raise RuntimeError(
                f"rolling sync of {target}: {rollout.state}, {len(summary.results)}/{expected} "
                f"answered, failed {dict(rollout.failed)}"
            )
        return elapsed

    def wait_answering(self, hosts: Sequence[str], timeout_s: float) -> float:
        """Seconds until every host answers."""
        start = time.monotonic()
        self.wait_for(lambda: self.ready(hosts), f"{len(hosts)} minions to answer", timeout_s)
        return time.monotonic() - start

    def sync_wait(self, target: str, expected: int) -> float:
        """Wall time of `daybook sync --wait --target TARGET`, checked to be a full success."""
        env = self.env(
            **identity(OPERATOR_ID), DAYBOOK_DATA_DIR=str(self.master_dir), DAYBOOK_PORT="0"
        )
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
        fleet.close()


def idle_window_s(options: Options) -> float:
    """How long idle CPU is measured: a minute holds every periodic task of an idle master
    at least twice (the 30 s republish, the leader's session renewals, the store's polls);
    15 s windows caught the republish or not, and read 1.0 to 2.2 % for the same code."""
    return 5.0 if options.quick else 60.0


def pause(seconds: float) -> None:
    """Let time pass for a measurement window (idle CPU), not to wait for a condition."""
    threading.Event().wait(seconds)
