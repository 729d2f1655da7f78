"""Shared test fixtures: the S3 (moto and SeaweedFS) and Consul-compatible servers, loaded as
plugins, and a ZeroMQ context."""

from collections.abc import Iterator

import pytest
import zmq
from hypothesis import HealthCheck, settings

pytest_plugins = ["s3_server", "seaweed_server", "consul_server"]

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
