"""Shared test fixtures: the S3 servers (moto and SeaweedFS), loaded as plugins, the
Consul-compatible server (plain, over TLS, and without jitter for the Consul tests), an HTTP
session to talk to it, the shared key store on both backends, a master running in-process
on the test module's `settings`, and a ZeroMQ context."""

from collections.abc import Iterator

import pytest
import requests
import zmq
from hypothesis import HealthCheck, settings
from inprocess_fleet import RunningMaster

from daybook.config import Settings
from daybook_testing.consul_server import ConsulPKI, ConsulServer

pytest_plugins = ["s3_server", "seaweed_server", "keystores"]

# Property tests judge behaviour, never speed: on a shared 2-core machine one example can
# take longer than Hypothesis's default 200 ms deadline without anything being wrong.
settings.register_profile("daybook", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("daybook")


@pytest.fixture
def context() -> Iterator[zmq.Context[zmq.Socket[bytes]]]:
    """A ZeroMQ context of the test's own, its sockets closed without lingering."""
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)


@pytest.fixture(scope="session")
def consul_pki(tmp_path_factory: pytest.TempPathFactory) -> ConsulPKI:
    """The session's test CA and certificates (made once: a few milliseconds)."""
    return ConsulPKI.create(tmp_path_factory.mktemp("consul-pki"))


@pytest.fixture
def consul_tls_server(consul_pki: ConsulPKI) -> Iterator[ConsulServer]:
    """As `consul_server`, over HTTPS with the session CA's certificate for 127.0.0.1."""
    with ConsulServer(
        max_query_time_s=10.0, default_query_time_s=5.0, tls=consul_pki.server
    ) as server:
        yield server


@pytest.fixture
def consul_server() -> Iterator[ConsulServer]:
    """A fresh, running Consul double on 127.0.0.1.

    Query times are shortened (default 5 s, max 10 s, jitter on) so a forgotten `wait`
    cannot stall a test for Consul's real five minutes; tests may change them.
    """
    with ConsulServer(max_query_time_s=10.0, default_query_time_s=5.0) as server:
        yield server


@pytest.fixture
def server(consul_server: ConsulServer) -> ConsulServer:
    """The Consul double with jitter off, as the Consul tests use it: exact bounds in timing
    tests (jitter has its own test, which turns it on)."""
    consul_server.jitter = False
    return consul_server


@pytest.fixture
def http() -> Iterator[requests.Session]:
    """A requests session of the test's own, for speaking Consul's HTTP API directly."""
    with requests.Session() as session:
        yield session


@pytest.fixture
def master(settings: Settings) -> Iterator[RunningMaster]:
    """A master running in this process on the `settings` the test module gives; stopped
    after the test unless the test stopped it."""
    running = RunningMaster(settings)
    yield running
    if running.thread.is_alive():
        running.shutdown()
