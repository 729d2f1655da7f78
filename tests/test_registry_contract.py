"""One contract for every Registry: the Consul adapter (over HTTP and TLS) and the embedded
mappings file."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from daybook.registry.base import Registry, open_registry


@pytest.fixture(params=["file", "consul", "consul-tls"])
def registry(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Registry]:
    if request.param == "file":
        reg = open_registry(f"file://{tmp_path / 'mappings.json'}")
    elif request.param == "consul":
        server: Any = request.getfixturevalue("consul_server")
        reg = open_registry(f"consul://{server.address}/daybook/hosts/")
    else:
        # As an operator would write it: the CA alone makes consul:// use TLS.
        server = request.getfixturevalue("consul_tls_server")
        monkeypatch.setenv("CONSUL_CACERT", request.getfixturevalue("consul_pki").ca_file)
        reg = open_registry(f"consul://{server.address}/daybook/hosts/")
        assert reg.url.startswith("consul+https://")
    try:
        yield reg
    finally:
        reg.close()


def set_services(reg: Registry, pattern: str, *services: str) -> tuple[str, ...]:
    return reg.update(pattern, lambda _current: tuple(services))


def test_empty_registry_reads_as_no_mappings(registry: Registry) -> None:
    snapshot = registry.read()
    assert snapshot.mappings == {}
    assert snapshot.index >= 1


def test_update_creates_replaces_and_deletes(registry: Registry) -> None:
    assert set_services(registry, "web-*", "a", "b") == ("a", "b")
    assert registry.read().mappings == {"web-*": ("a", "b")}
    assert set_services(registry, "web-*", "c") == ("c",)
    set_services(registry, "db-*", "d")
    assert registry.read().mappings == {"web-*": ("c",), "db-*": ("d",)}
    # An empty result removes the pattern altogether.
    assert set_services(registry, "web-*") == ()
    assert registry.read().mappings == {"db-*": ("d",)}


def test_update_sees_the_current_services(registry: Registry) -> None:
    set_services(registry, "web-*", "a")
    seen: list[tuple[str, ...]] = []

    def add_b(current: tuple[str, ...]) -> tuple[str, ...]:
        seen.append(current)
        return (*current, "b")

    assert registry.update("web-*", add_b) == ("a", "b")
    assert seen[-1] == ("a",)


def test_no_change_keeps_the_index(registry: Registry) -> None:
    set_services(registry, "web-*", "a")
    before = registry.read().index
    set_services(registry, "web-*", "a")
    assert registry.read().index == before


def test_index_grows_on_every_change(registry: Registry) -> None:
    first = registry.read().index
    set_services(registry, "web-*", "a")
    second = registry.read().index
    set_services(registry, "web-*")
    third = registry.read().index
    assert first < second < third


def test_concurrent_adds_lose_no_update(registry: Registry) -> None:
    services = [f"svc_{i}" for i in range(24)]
    errors: list[BaseException] = []

    def add(names: list[str]) -> None:
        try:
            for name in names:
                registry.update("web-*", lambda cur, n=name: (*cur, n) if n not in cur else cur)
        except BaseException as exc:  # surfaced in the main thread below
            errors.append(exc)

    workers = [threading.Thread(target=add, args=(services[i::3],)) for i in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
    assert not errors
    assert sorted(registry.read().mappings["web-*"]) == sorted(services)


def test_watch_answers_at_once_for_index_zero(registry: Registry) -> None:
    set_services(registry, "web-*", "a")
    snapshot = registry.watch(0, timeout_s=30)
    assert snapshot.mappings == {"web-*": ("a",)}


def test_watch_times_out_with_the_same_data(registry: Registry) -> None:
    set_services(registry, "web-*", "a")
    current = registry.read()
    snapshot = registry.watch(current.index, timeout_s=0.5)
    assert snapshot.mappings == current.mappings
    assert snapshot.index == current.index


def test_watch_wakes_on_a_change(registry: Registry) -> None:
    set_services(registry, "web-*", "a")
    current = registry.read()
    result: list[Any] = []
    watcher = threading.Thread(target=lambda: result.append(registry.watch(current.index, 20)))
    watcher.start()
    set_services(registry, "db-*", "d")
    watcher.join(timeout=20)
    assert result, "watch did not return"
    assert result[0].index > current.index
    assert result[0].mappings == {"web-*": ("a",), "db-*": ("d",)}


def test_watch_wakes_on_a_delete(registry: Registry) -> None:
    set_services(registry, "web-*", "a")
    set_services(registry, "db-*", "d")
    current = registry.read()
    result: list[Any] = []
    watcher = threading.Thread(target=lambda: result.append(registry.watch(current.index, 20)))
    watcher.start()
    set_services(registry, "db-*")
    watcher.join(timeout=20)
    assert result, "watch did not return"
    assert result[0].index > current.index
    assert result[0].mappings == {"web-*": ("a",)}
