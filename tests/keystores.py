"""Pytest fixtures for the shared key store: `opener`, run once over each backend (the file
beside the mappings file, and Consul KV on the Consul double). Loaded as a plugin by
conftest.py; tests import `Opener` from here for their signatures."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from daybook.registry.keystore import KeyStore, open_keystore
from daybook_testing.consul_server import ConsulServer

# Opens a store on the test's one backend: each call is another master's handle on it.
Opener = Callable[[], KeyStore]


@pytest.fixture
def keystore_consul_path() -> str:
    """What follows the address in `opener`'s Consul URL: nothing (the default prefix) unless
    a test module overrides this fixture to name one."""
    return ""


@pytest.fixture(params=["file", "consul"])
def opener(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    consul_server: ConsulServer,
    keystore_consul_path: str,
) -> Iterator[Opener]:
    """Opens key stores on one backend (both, as two runs of the test); all closed after."""
    opened: list[KeyStore] = []
    url = (
        f"file://{tmp_path / 'mappings.json'}"
        if request.param == "file"
        else f"consul://{consul_server.address}{keystore_consul_path}"
    )

    def open_one() -> KeyStore:
        store = open_keystore(url)
        opened.append(store)
        return store

    yield open_one
    for store in opened:
        store.close()
