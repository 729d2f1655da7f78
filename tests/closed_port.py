"""A loopback URL nobody answers: for tests of an endpoint or proxy that cannot be reached."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def refused_url() -> Iterator[str]:
    """`http://127.0.0.1:PORT` on a socket bound but never listening: connections are refused
    at once, and the port stays ours (no one else can take it) until the block ends."""
    with socket.socket() as closed_port:
        closed_port.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{closed_port.getsockname()[1]}"
