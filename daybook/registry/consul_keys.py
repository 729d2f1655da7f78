"""The key ring in Consul KV: one key per CURVE key under the keys prefix beside the hosts
prefix (`daybook/keys/<fingerprint>`), the value the `Key` record as JSON."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from daybook import wire
from daybook.errors import RegistryError, WireError
from daybook.model.keys import Key
from daybook.registry.base import DEFAULT_KEY_PREFIX
from daybook.registry.consul import ConsulRegistry
from daybook.registry.keystore import (
    KeySnapshot,
    StoredKey,
    check_name,
    encode_key,
    key_name,
    keys_prefix,
)

log = logging.getLogger(__name__)


class ConsulKeyStore:
    """Keys in Consul KV, written with check-and-set on each key's ModifyIndex (`cas=0`
    creates), deleted with it too; `watch` is a blocking query on the keys prefix.

    The connection (address, TLS, ACL token, datacenter and namespace) is the registry's
    own: the store talks through a `ConsulRegistry` opened from the same URL.
    """

    def __init__(self, consul: ConsulRegistry) -> None:
        self._consul = consul
        self._prefix = keys_prefix(consul.key_prefix)
        # Parsed values by key and ModifyIndex: an unchanged entry is neither decoded nor
        # warned about again on every watch round.
        self._parsed: dict[str, tuple[int, Key | None]] = {}

    @classmethod
    def from_url(cls, url: str, *, key_prefix: str = DEFAULT_KEY_PREFIX) -> ConsulKeyStore:
        return cls(ConsulRegistry.from_url(url, key_prefix=key_prefix))

    @property
    def url(self) -> str:
        return f"consul://{self._consul.address}/{self._prefix}"

    @property
    def key_prefix(self) -> str:
        return self._prefix

    def read(self) -> KeySnapshot:
        return self.watch(0, 0.0)

    def watch(self, index: int, timeout_s: float) -> KeySnapshot:
        raw_index, entries = self._consul.list_entries(self._prefix, index, timeout_s)
        try:
            new_index = int(raw_index)
        except (TypeError, ValueError):
            raise RegistryError(
                f"Consul at {self._consul.address} sent an invalid X-Consul-Index {raw_index!r}"
            ) from None
        keys: dict[str, StoredKey] = {}
        parsed: dict[str, tuple[int, Key | None]] = {}
        for entry in entries or ():
            name = str(entry["Key"])
            version = int(entry.get("ModifyIndex") or 0)
            cached = self._parsed.get(name)
            key = cached[1] if cached and cached[0] == version else self._parse(name, entry)
            parsed[name] = (version, key)
            if key is not None:
                keys[key.public_key] = StoredKey(key, version)
        self._parsed = parsed
        # Consul never sends 0, but a 0 would turn every watch into a busy loop.
        return KeySnapshot(keys=keys, index=max(1, new_index))

    def write(self, key: Key, version: int) -> int | None:
        name = self._prefix + key_name(key.public_key)
        value = encode_key(key)
        if not self._consul.write_entry(name, value.decode(), version):
            return None
        # A PUT answers true or false, never the new index: read it back. Should another
        # master have written in between, this write is as good as lost: say so.
        entry = self._consul.get_entry(name)
        if entry is None or _value_of(entry) != value:
            return None
        return int(entry["ModifyIndex"])

    def delete(self, public_key: str, version: int) -> bool:
        return self._consul.delete_entry(self._prefix + key_name(public_key), version)

    def close(self) -> None:
        self._consul.close()

    def _parse(self, name: str, entry: Mapping[str, Any]) -> Key | None:
        if name == self._prefix:
            return None  # the prefix's own "folder" key, as the Consul UI creates
        try:
            key = wire.from_json(Key, _value_of(entry) or b"null")
            return check_name(name[len(self._prefix) :], key)
        except (ValueError, WireError) as exc:
            log.warning("skipping the invalid key entry in Consul key %r: %s", name, exc)
            return None


def _value_of(entry: Mapping[str, Any]) -> bytes:
    value = entry.get("Value") or b""
    return value if isinstance(value, bytes) else str(value).encode()
