"""Shared test fixtures: the S3 servers (moto and SeaweedFS), loaded as plugins, the
Consul-compatible server (plain and over TLS), and a ZeroMQ context."""

from collections.abc import Iterator

import pytest
import zmq
from hypothesis import HealthCheck, settings

from daybook_testing.consul_server import ConsulPKI, ConsulServer

pytest_plugins = ["s3_server", "seaweed_server"]

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
