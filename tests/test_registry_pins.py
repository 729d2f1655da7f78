"""Pins in every Registry: stored beside the mappings, read and watched with them, written
with check-and-set; and each backend's own layout and its bad values."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from daybook import wire
from daybook.errors import ConfigError
from daybook.model.pins import Pin
from daybook.registry.base import Registry, Snapshot, open_registry
from daybook.registry.consul import ConsulRegistry, pins_prefix_for
from daybook_testing.consul_server import ConsulServer


@pytest.fixture(params=["file", "consul"])
def registry(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Registry]:
    if request.param == "file":
        reg = open_registry(f"file://{tmp_path / 'mappings.json'}")
    else:
        server: Any = request.getfixturevalue("consul_server")
        reg = open_registry(f"consul://{server.address}/daybook/hosts/")
    try:
        yield reg
    finally:
        reg.close()


def pin(reg: Registry, service: str, version: str | None) -> Pin | None:
    wanted = Pin(service, version) if version is not None else None
    return reg.update_pin(service, lambda _current: wanted)


def watch_in_thread(reg: Registry, index: int) -> tuple[threading.Thread, list[Snapshot]]:
    result: list[Snapshot] = []
    watcher = threading.Thread(target=lambda: result.append(reg.watch(index, 20)))
    watcher.start()
    return watcher, result


def test_no_pins_at_first(registry: Registry) -> None:
    assert registry.read().pins == {}


def test_pins_are_created_replaced_and_removed(registry: Registry) -> None:
    assert pin(registry, "web", "1.2") == Pin("web", "1.2")
    pin(registry, "db", "7")
    assert registry.read().pins == {"web": Pin("web", "1.2"), "db": Pin("db", "7")}
    registry.update_pin(
        "web", lambda current: Pin("web", "1.1", previous=current and current.version)
    )
    assert registry.read().pins["web"] == Pin("web", "1.1", previous="1.2")
    assert pin(registry, "web", None) is None
    assert registry.read().pins == {"db": Pin("db", "7")}


def test_the_change_sees_the_current_pin(registry: Registry) -> None:
    seen: list[Pin | None] = []

    def record(current: Pin | None) -> Pin | None:
        seen.append(current)
        return current

    registry.update_pin("web", record)
    pin(registry, "web", "3")
    registry.update_pin("web", record)
    assert seen == [None, Pin("web", "3")]


def test_pins_and_mappings_live_side_by_side(registry: Registry) -> None:
    pin(registry, "web", "1")
    registry.update("web-*", lambda _: ("web",))
    pin(registry, "db", "2")
    registry.update("web-*", lambda _: ("web", "db"))
    snapshot = registry.read()
    assert snapshot.mappings == {"web-*": ("web", "db")}
    assert set(snapshot.pins) == {"web", "db"}


def test_an_unchanged_pin_keeps_the_index(registry: Registry) -> None:
    pin(registry, "web", "1")
    before = registry.read().index
    pin(registry, "web", "1")
    pin(registry, "other", None)  # unpinning what is not pinned writes nothing
    assert registry.read().index == before


def test_every_pin_change_moves_the_index(registry: Registry) -> None:
    first = registry.read().index
    pin(registry, "web", "1")
    second = registry.read().index
    pin(registry, "web", None)
    third = registry.read().index
    assert first < second < third


def test_two_writers_lose_no_update(registry: Registry) -> None:
    pin(registry, "web", "0")
    errors: list[BaseException] = []

    def bump(current: Pin | None) -> Pin:
        assert current is not None
        return Pin("web", str(int(current.version) + 1))

    def writer() -> None:
        try:
            for _ in range(10):
                registry.update_pin("web", bump)
        except BaseException as exc:  # surfaced in the main thread below
            errors.append(exc)

    writers = [threading.Thread(target=writer) for _ in range(2)]
    for thread in writers:
        thread.start()
    for thread in writers:
        thread.join(timeout=60)
    assert not errors
    assert registry.read().pins["web"].version == "20"


def test_watch_wakes_on_a_pin(registry: Registry) -> None:
    registry.update("web-*", lambda _: ("web",))
    current = registry.read()
    watcher, result = watch_in_thread(registry, current.index)
    pin(registry, "web", "1")
    watcher.join(timeout=20)
    assert result, "watch did not return"
    assert result[0].index > current.index
    assert result[0].pins == {"web": Pin("web", "1")}
    assert result[0].mappings == {"web-*": ("web",)}


def test_watch_wakes_on_an_unpin(registry: Registry) -> None:
    pin(registry, "web", "1")
    current = registry.read()
    watcher, result = watch_in_thread(registry, current.index)
    pin(registry, "web", None)
    watcher.join(timeout=20)
    assert result, "watch did not return"
    assert result[0].index > current.index
    assert result[0].pins == {}


def test_watch_still_wakes_on_a_mapping_with_pins_present(registry: Registry) -> None:
    pin(registry, "web", "1")
    current = registry.read()
    watcher, result = watch_in_thread(registry, current.index)
    registry.update("db-*", lambda _: ("db",))
    watcher.join(timeout=20)
    assert result, "watch did not return"
    assert result[0].mappings == {"db-*": ("db",)}
    assert result[0].pins == {"web": Pin("web", "1")}


# -- the file: its layout, old files, bad values ---------------------------------------------


def test_the_file_keeps_pins_in_its_pins_table(tmp_path: Path) -> None:
    path = tmp_path / "mappings.json"
    reg = open_registry(f"file://{path}")
    reg.update("web-*", lambda _: ("web",))
    assert "pins" not in json.loads(path.read_text())  # no pin, the old shape
    reg.update_pin("web", lambda _: Pin("web", "2", previous="1"))
    document = json.loads(path.read_text())
    assert document["hosts"] == {"web-*": ["web"]}
    assert document["pins"]["web"]["version"] == "2"
    assert document["pins"]["web"]["previous"] == "1"


def test_an_old_file_without_pins_reads_as_no_pins(tmp_path: Path) -> None:
    path = tmp_path / "mappings.json"
    path.write_text(json.dumps({"format": 1, "generation": 4, "hosts": {"web-*": ["web"]}}))
    snapshot = open_registry(f"file://{path}").read()
    assert snapshot.mappings == {"web-*": ("web",)}
    assert snapshot.pins == {}
    assert snapshot.index == 4


def test_bad_pins_in_the_file_are_skipped_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "mappings.json"
    good = wire.to_builtins(Pin("db", "1"))
    bad_version = {"service": "web", "version": "../up"}
    other = wire.to_builtins(Pin("db", "1"))  # stored under the wrong service
    pins = {"db": good, "web": bad_version, "api": other, "x": "nonsense"}
    path.write_text(json.dumps({"format": 1, "generation": 1, "hosts": {}, "pins": pins}))
    reg = open_registry(f"file://{path}")
    with caplog.at_level(logging.WARNING):
        assert reg.read().pins == {"db": Pin("db", "1")}
    for service in ("'web'", "'api'", "'x'"):
        assert service in caplog.text
    # A mapping update writes the bad values back untouched, for an operator to mend.
    reg.update("web-*", lambda _: ("web",))
    assert json.loads(path.read_text())["pins"]["web"] == bad_version
    # Pinning over a bad value replaces it.
    reg.update_pin("web", lambda current: Pin("web", "2") if current is None else current)
    assert reg.read().pins["web"] == Pin("web", "2")


# -- Consul: the keys, the values, bad values ------------------------------------------------


def test_pins_go_beside_the_key_prefix() -> None:
    assert pins_prefix_for("daybook/hosts/") == "daybook/pins/"
    assert pins_prefix_for("team/daybook-hosts/") == "team/pins/"
    assert pins_prefix_for("hosts/") == "pins/"
    with pytest.raises(ConfigError, match="ends in pins/"):
        pins_prefix_for("daybook/pins/")


def test_a_consul_pin_is_one_json_key(consul_server: ConsulServer) -> None:
    reg = ConsulRegistry(address=consul_server.address, key_prefix="team/hosts/")
    try:
        reg.update_pin("web", lambda _: Pin("web", "1.2", previous="1.1"))
    finally:
        reg.close()
    entry = consul_server.entries()["team/pins/web"]
    assert json.loads(entry.value) == {
        "service": "web",
        "version": "1.2",
        "previous": "1.1",
        "hosts": None,
    }


def test_consul_writes_pins_with_check_and_set(consul_server: ConsulServer) -> None:
    reg = ConsulRegistry(address=consul_server.address)
    try:
        reg.update_pin("web", lambda _: Pin("web", "1"))
        index = consul_server.entries()["daybook/pins/web"].modify_index
        reg.update_pin("web", lambda _: Pin("web", "2"))
        reg.update_pin("web", lambda _: None)
    finally:
        reg.close()
    writes = [r for r in consul_server.request_log if r.method in ("PUT", "DELETE")]
    assert [r.method for r in writes] == ["PUT", "PUT", "DELETE"]
    assert writes[0].query["cas"] == ["0"]
    assert writes[1].query["cas"] == [str(index)]
    assert writes[2].query["cas"] not in (["0"], [str(index)])


def test_a_lost_check_and_set_is_retried_on_the_new_value(consul_server: ConsulServer) -> None:
    reg = ConsulRegistry(address=consul_server.address)
    calls: list[Pin | None] = []

    def racing(current: Pin | None) -> Pin:
        calls.append(current)
        if len(calls) == 1:  # another operator pins in between our read and our write
            consul_server.put("daybook/pins/web", wire.to_json(Pin("web", "9")))
        return Pin("web", "3", previous=current.version if current else None)

    try:
        assert reg.update_pin("web", racing) == Pin("web", "3", previous="9")
        assert reg.read().pins["web"] == Pin("web", "3", previous="9")
    finally:
        reg.close()
    assert calls == [None, Pin("web", "9")]


def test_bad_consul_pins_are_skipped_with_a_warning(
    consul_server: ConsulServer, caplog: pytest.LogCaptureFixture
) -> None:
    consul_server.put("daybook/pins/db", wire.to_json(Pin("db", "1")))
    consul_server.put("daybook/pins/web", "not json")
    consul_server.put("daybook/pins/api", wire.to_json(Pin("db", "1")))
    consul_server.put("daybook/pins/odd", b'{"service": "odd", "version": "../x"}')
    reg = ConsulRegistry(address=consul_server.address)
    try:
        with caplog.at_level(logging.WARNING):
            assert reg.read().pins == {"db": Pin("db", "1")}
            warnings = caplog.text.count("skipping Consul key")
            reg.read()  # an unchanged bad value is not warned about again
            assert caplog.text.count("skipping Consul key") == warnings == 3
    finally:
        reg.close()
