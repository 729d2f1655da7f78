"""The KeyStore protocol: the fleet's key ring in the registry backend, shared by every
master, and `open_keystore(registry_url)`.

A key accepted on one master must be accepted on all, so the key ring lives beside the
mappings: one Consul KV key per CURVE key under a keys prefix next to the hosts prefix
(`daybook/hosts/` -> `daybook/keys/`), or a file beside the embedded mappings file. Every
write is a check-and-set on the entry's version, so two masters never lose each other's
changes; `watch` lets a master see the others' changes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from daybook import wire
from daybook.errors import ConfigError
from daybook.model.keys import Key, fingerprint
from daybook.registry.base import DEFAULT_KEY_PREFIX
from daybook.urls import file_url_path, split_url

KEYS_SEGMENT = "keys"
# Beside the embedded mappings file: `<mappings file>.keys.json`.
FILE_SUFFIX = ".keys.json"


@dataclass(frozen=True)
class StoredKey:
    """One key as the store holds it, and the version a check-and-set must name to change
    it (Consul's ModifyIndex; the file's generation when it was written)."""

    key: Key
    version: int


@dataclass(frozen=True)
class KeySnapshot:
    """Every valid key in the store, by public key, and the store's change index."""

    keys: Mapping[str, StoredKey] = field(default_factory=dict)
    # Opaque, increases on change (Consul's X-Consul-Index; a generation for the file).
    index: int = 1


class KeyStore(Protocol):
    """A shared key ring. Implementations: `ConsulKeyStore` and `FileKeyStore`."""

    @property
    def url(self) -> str: ...

    def read(self) -> KeySnapshot:
        """Every key. A malformed entry is skipped with a warning, never trusted."""
        ...

    def watch(self, index: int, timeout_s: float) -> KeySnapshot:
        """Block until the store's index moves past `index`, or `timeout_s` passes, and
        return the current keys either way (compare data, not indexes). `index` 0 answers
        at once; a returned index lower than `index` means start again from 0."""
        ...

    def write(self, key: Key, version: int) -> int | None:
        """Put `key` if its stored version is still `version` (0: only if absent).

        Returns the new version, or None when the check-and-set lost (another master
        changed or created the entry meanwhile: read again and decide again).
        """
        ...

    def write_batch(self, items: Sequence[tuple[Key, int]]) -> list[int | None]:
        """`write` for each (key, version), in as few round trips as the store allows: the
        new versions, in order, None where the check-and-set lost."""
        ...

    def delete(self, public_key: str, version: int) -> bool:
        """Remove the key if its stored version is still `version`; False when it changed
        meanwhile. A key already gone counts as deleted."""
        ...

    def close(self) -> None: ...


def keys_prefix(hosts_prefix: str) -> str:
    """The key ring's Consul prefix beside the mappings' one: `daybook/hosts/` gives
    `daybook/keys/`, a one-segment `hosts/` gives `keys/`."""
    parent = hosts_prefix.rstrip("/").rpartition("/")[0]
    prefix = f"{parent}/{KEYS_SEGMENT}/" if parent else f"{KEYS_SEGMENT}/"
    if prefix == hosts_prefix:
        raise ConfigError(
            f"the Consul key prefix {hosts_prefix!r} is where the key ring would go; "
            "name the hosts prefix something other than keys/"
        )
    return prefix


def key_name(public_key: str) -> str:
    """A key's name in the store: its fingerprint with base64's `/` and `+` made URL-safe,
    so it is one path segment that no HTTP layer rewrites."""
    return fingerprint(public_key).replace("/", "_").replace("+", "-")


def keys_file(mappings_file: Path) -> Path:
    return mappings_file.with_name(mappings_file.name + FILE_SUFFIX)


def open_keystore(url: str, *, key_prefix: str = DEFAULT_KEY_PREFIX) -> KeyStore:
    """The key ring beside the registry `url` names (`consul://…` or `file:///PATH`), for
    the mappings under `key_prefix` (a prefix in the URL wins, as for the registry)."""
    scheme = split_url(url, "registry").scheme
    if scheme in ("consul", "consul+https"):
        from daybook.registry.consul_keys import ConsulKeyStore

        return ConsulKeyStore.from_url(url, key_prefix=key_prefix)
    if scheme == "file":
        from daybook.registry.file_keys import FileKeyStore

        return FileKeyStore(keys_file(file_url_path(url, "registry")))
    raise ConfigError(
        f"unsupported registry URL {url!r}: expected consul://HOST:PORT[/KEY_PREFIX] or file:///PATH"
    )


def encode_key(key: Key) -> bytes:
    """A key record as the store holds it: JSON through the wire codec."""
    return wire.to_json(key)


def check_name(name: str, key: Key) -> Key:
    """`key`, read under `name`, if the name is that key's own; ValueError otherwise (a
    value copied under another key's name must not stand for it)."""
    if name != key_name(key.public_key):
        raise ValueError(f"holds the key {key.fingerprint}, not the one its name says")
    return key
