"""The key ring in Consul KV: one key per CURVE key under the keys prefix beside the hosts
prefix (`daybook/keys/<fingerprint>`), the value the `Key` record as JSON."""

from __future__ import annotations

import base64
import logging
from collections.abc import Mapping, Sequence
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

# Operations in one Consul transaction: agent/txn_endpoint.go's maxTxnOps, 64 until
# Consul 1.x raised it (a larger limit still takes 64).
MAX_TXN_OPS = 64


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

    def write_batch(self, items: Sequence[tuple[Key, int]]) -> list[int | None]:
        """Check-and-set writes in Consul transactions of up to MAX_TXN_OPS keys: a
        restart's thousands of key touches cost a request for each 64, not two for each
        key. A transaction is all or nothing; when one of its writes loses, that chunk is
        written again key by key to learn which."""
        written: list[int | None] = []
        for start in range(0, len(items), MAX_TXN_OPS):
            written += self._write_chunk(items[start : start + MAX_TXN_OPS])
        return written

    def _write_chunk(self, chunk: Sequence[tuple[Key, int]]) -> list[int | None]:
        if len(chunk) == 1:
            return [self.write(*chunk[0])]
        names = [self._prefix + key_name(key.public_key) for key, _ in chunk]
        operations = [
            {
                "KV": {
                    "Verb": "cas",
                    "Key": name,
                    "Value": base64.b64encode(encode_key(key)).decode(),
                    "Index": version,
                }
            }
            for name, (key, version) in zip(names, chunk, strict=True)
        ]
        results = self._consul.transact(f"write {len(chunk)} keys", operations)
        if results is None:
            return [self.write(key, version) for key, version in chunk]
        versions = {
            str(result["KV"]["Key"]): int(result["KV"]["ModifyIndex"])
            for result in results
            if isinstance(result, dict) and isinstance(result.get("KV"), dict)
        }
        return [versions.get(name) for name in names]

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
