"""The shared key store's contract, run over both implementations: Consul KV (against the
Consul double) and the file beside the embedded mappings file. Check-and-set between two
writers, malformed values skipped, watches waking on another writer's change, and the
one-time import of an old single-master keyring.json."""

from __future__ import annotations

import json
import logging
import stat
import threading
from dataclasses import replace
from pathlib import Path

import pytest
from keystores import Opener

from daybook import wire
from daybook.errors import ConfigError
from daybook.model.keys import ACCEPTED, MINION, PENDING, Key
from daybook.net.keys import KeyPair
from daybook.registry.consul_keys import MAX_TXN_OPS, ConsulKeyStore
from daybook.registry.file_keys import FileKeyStore
from daybook.registry.keystore import key_name, keys_file, keys_prefix, open_keystore
from daybook_testing.consul_server import ConsulServer
from master.keyring import KeyRing


@pytest.fixture
def keystore_consul_path() -> str:
    """The Consul store at an explicit hosts prefix (the default one, named)."""
    return "/daybook/hosts/"


def minion_key(host: str | None = "web-1", state: str = PENDING) -> Key:
    return Key(KeyPair.generate().public, MINION, state, host, "10.0.0.1", 1.0, 1.0)


def test_keys_are_created_changed_and_deleted_with_check_and_set(opener: Opener) -> None:
    store = opener()
    assert store.read().keys == {}
    key = minion_key()
    created = store.write(key, 0)
    assert created is not None
    assert created >= 1
    assert store.write(key, 0) is None  # create only when absent
    assert store.read().keys[key.public_key].key == key
    assert store.read().keys[key.public_key].version == created

    accepted = replace(key, state=ACCEPTED)
    assert store.write(accepted, created + 1000) is None  # a version that never was
    changed = store.write(accepted, created)
    assert changed is not None
    assert changed > created
    assert store.read().keys[key.public_key].key.state == ACCEPTED

    assert store.delete(key.public_key, created) is False  # stale: it changed since
    assert key.public_key in store.read().keys
    assert store.delete(key.public_key, changed) is True
    assert store.read().keys == {}
    assert store.delete(key.public_key, changed) is True  # already gone counts as deleted


def test_of_two_masters_writing_one_version_exactly_one_wins(opener: Opener) -> None:
    first, second = opener(), opener()
    key = minion_key()
    version = first.write(key, 0)
    assert version is not None
    assert second.read().keys[key.public_key].version == version
    accepted = second.write(replace(key, state=ACCEPTED), version)
    rejected = first.write(replace(key, state="rejected"), version)
    assert accepted is not None
    assert rejected is None
    assert first.read().keys[key.public_key].key.state == ACCEPTED
    # Both creating the same new key: one create wins, the other learns it exists.
    fresh = minion_key("web-2")
    results = [first.write(fresh, 0), second.write(replace(fresh, address="10.0.0.2"), 0)]
    assert sorted(r is None for r in results) == [False, True]


def test_a_watch_wakes_on_another_masters_change(opener: Opener) -> None:
    watcher, writer = opener(), opener()
    index = watcher.read().index
    seen: list[set[str]] = []
    thread = threading.Thread(target=lambda: seen.append(set(watcher.watch(index, 20.0).keys)))
    thread.start()
    key = minion_key()
    writer.write(key, 0)
    thread.join(timeout=30.0)
    assert seen == [{key.public_key}]
    # Nothing changes: the watch ends at its timeout with the same keys and index.
    again = watcher.read()
    quiet = watcher.watch(again.index, 0.5)
    assert quiet.index == again.index
    assert set(quiet.keys) == {key.public_key}


def test_the_file_store_is_owner_only_beside_the_mappings(tmp_path: Path) -> None:
    store = open_keystore(f"file://{tmp_path / 'mappings.json'}")
    assert isinstance(store, FileKeyStore)
    assert (
        store.path
        == tmp_path / "mappings.json.keys.json"
        == keys_file(store.path.parent / "mappings.json")
    )
    store.write(minion_key(), 0)
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600


def test_the_consul_keys_go_beside_the_hosts_prefix_with_cas(consul_server: ConsulServer) -> None:
    store = open_keystore(f"consul://{consul_server.address}/fleet/a/hosts/")
    assert isinstance(store, ConsulKeyStore)
    try:
        assert store.key_prefix == "fleet/a/keys/"
        key = minion_key()
        version = store.write(key, 0)
        assert version is not None
        store.delete(key.public_key, version)
    finally:
        store.close()
    name = "fleet/a/keys/" + key_name(key.public_key)
    assert "/" not in key_name(key.public_key)
    assert "+" not in key_name(key.public_key)
    writes = [r for r in consul_server.request_log if r.method in ("PUT", "DELETE")]
    assert [(r.method, r.path) for r in writes] == [
        ("PUT", "/v1/kv/" + name),
        ("DELETE", "/v1/kv/" + name),
    ]
    assert all("cas" in r.query for r in writes)


def test_a_batch_writes_each_key_with_check_and_set(opener: Opener) -> None:
    """More keys than one Consul transaction holds, one of them stale: it alone loses."""
    store, other = opener(), opener()
    keys = [minion_key(f"web-{index}") for index in range(MAX_TXN_OPS + 6)]
    stale = MAX_TXN_OPS + 2  # in the second transaction
    taken = other.write(keys[stale], 0)  # another master created this one first
    assert taken is not None
    versions = store.write_batch([(key, 0) for key in keys])
    assert versions[stale] is None
    assert all(version is not None for index, version in enumerate(versions) if index != stale)
    stored = store.read().keys
    for key, version in zip(keys, versions, strict=True):
        assert stored[key.public_key].version == (taken if version is None else version)
    accepted = [
        (replace(key, state=ACCEPTED), version)
        for key, version in zip(keys[:3], versions[:3], strict=True)
    ]
    again = store.write_batch([*accepted, (keys[3], 0)])  # the last is stale: it exists
    assert again[3] is None
    assert all(version is not None for version in again[:3])
    assert {store.read().keys[key.public_key].key.state for key in keys[:3]} == {ACCEPTED}
    assert store.write_batch([]) == []


def test_a_batch_in_consul_is_one_transaction_for_each_64_keys(
    consul_server: ConsulServer,
) -> None:
    store = open_keystore(f"consul://{consul_server.address}/daybook/hosts/")
    try:
        versions = store.write_batch([(minion_key(f"web-{index}"), 0) for index in range(100)])
    finally:
        store.close()
    assert all(version is not None for version in versions)
    writes = [(r.method, r.path) for r in consul_server.request_log if r.method == "PUT"]
    assert writes == [("PUT", "/v1/txn"), ("PUT", "/v1/txn")]


def test_the_keys_prefix_is_beside_the_hosts_prefix() -> None:
    assert keys_prefix("daybook/hosts/") == "daybook/keys/"
    assert keys_prefix("hosts/") == "keys/"
    with pytest.raises(ConfigError, match="keys"):
        keys_prefix("keys/")


def test_malformed_values_are_skipped_with_a_warning(
    tmp_path: Path, consul_server: ConsulServer, caplog: pytest.LogCaptureFixture
) -> None:
    good, other = minion_key(), minion_key("web-2")
    # Consul: a value that is no JSON, one that breaks a rule, one filed under another
    # key's name (it must not stand for that key).
    consul = open_keystore(f"consul://{consul_server.address}")
    prefix = "daybook/keys/"
    consul_server.put(prefix + "junk", b"not json")
    bad_host = wire.to_builtins(other) | {"host": "../../etc"}
    consul_server.put(prefix + key_name(other.public_key), json.dumps(bad_host).encode())
    consul_server.put(prefix + key_name(KeyPair.generate().public), wire.to_json(other))
    consul.write(good, 0)
    # The file: the same three, by hand.
    files = FileKeyStore(tmp_path / "mappings.json.keys.json")
    files.write(good, 0)
    document = json.loads(files.path.read_text())
    document["keys"]["junk"] = {"version": 9, "key": "not a key"}
    document["keys"][key_name(other.public_key)] = {"version": 9, "key": bad_host}
    document["keys"][key_name(KeyPair.generate().public)] = {
        "version": 9,
        "key": wire.to_builtins(other),
    }
    files.path.write_text(json.dumps(document))
    try:
        with caplog.at_level(logging.WARNING):
            for store in (consul, files):
                assert set(store.read().keys) == {good.public_key}
        warnings = [r.getMessage() for r in caplog.records if "skipping" in r.getMessage()]
        assert len(warnings) == 6
        caplog.clear()
        consul.read()
        files.read()
        assert not caplog.records, "an unchanged bad entry is warned about once"
    finally:
        consul.close()


def test_an_old_keyring_is_imported_once_into_an_empty_store(
    opener: Opener, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    operator = replace(minion_key("laptop", ACCEPTED), role="operator")
    old = tmp_path / "master-1" / "keyring.json"
    old.parent.mkdir()
    KeyRing(old, auto_accept=False, entries=[minion_key("web-1", ACCEPTED), operator]).save()
    with caplog.at_level(logging.WARNING, logger="master.keyring_store"):
        ring = KeyRing.open(opener(), auto_accept=False, cache_path=old)
    assert any("imported 2 of the 2 keys" in r.getMessage() for r in caplog.records)
    assert ring.is_operator(operator.public_key)
    assert len(opener().read().keys) == 2
    # Another master with a key ring of its own starts later: the store is not empty,
    # so nothing of its file is imported.
    other = tmp_path / "master-2" / "keyring.json"
    other.parent.mkdir()
    KeyRing(other, auto_accept=False, entries=[minion_key("web-9", ACCEPTED)]).save()
    second = KeyRing.open(opener(), auto_accept=False, cache_path=other)
    assert second.listing() == ring.listing()
    assert len(opener().read().keys) == 2
