"""The embedded registry's key ring: every master's keys in one JSON file beside the
mappings file, `<mappings file>.keys.json`, owner-only."""

from __future__ import annotations

import fcntl
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from daybook import wire
from daybook.errors import ConfigError, RegistryError, WireError
from daybook.files import FileSignature, file_signature, write_atomically
from daybook.model.keys import Key
from daybook.registry.keystore import KeySnapshot, StoredKey, check_name, key_name

log = logging.getLogger(__name__)

FORMAT_VERSION = 1

# One entry as the file holds it: {"version": N, "key": {the Key's fields}}.
_Entries = dict[str, Any]


class FileKeyStore:
    """Keys in one file: `{"format": 1, "generation": N, "keys": {name: {"version": V,
    "key": {...}}}}`, `name` being `key_name(public_key)`.

    The same discipline as the mappings file: writers serialise on an flock of a sidecar
    lock file and replace the file atomically (mode 0600: it says which keys may act for
    which hosts). `generation` is the change index, and each entry's version is the
    generation that last wrote it, so a check-and-set names it.
    """

    def __init__(self, path: Path, *, poll_interval_s: float = 0.2) -> None:
        self._path = path
        self._lock_path = path.with_name(path.name + ".lock")
        self._poll_interval_s = poll_interval_s
        # Parsed entries by name, with the raw entry they came from (None: invalid, warned
        # about once), so a watch round checks only what changed.
        self._parsed: dict[str, tuple[object, StoredKey | None]] = {}
        # The generation last read, and what the file looked like then: a watch polls the
        # file's signature and reads it only when that changes.
        self._seen: tuple[int, tuple[int, int, int] | None] = (0, None)

    @property
    def url(self) -> str:
        return self._path.absolute().as_uri()

    @property
    def path(self) -> Path:
        return self._path

    def read(self) -> KeySnapshot:
        signature = self._signature()
        generation, entries = self._load()
        self._seen = (generation, signature)
        keys: dict[str, StoredKey] = {}
        parsed: dict[str, tuple[object, StoredKey | None]] = {}
        for name, item in entries.items():
            cached = self._parsed.get(name)
            stored = cached[1] if cached and cached[0] == item else self._parse(name, item)
            parsed[name] = (item, stored)
            if stored is not None:
                keys[stored.key.public_key] = stored
        self._parsed = parsed
        return KeySnapshot(keys=keys, index=generation)

    def watch(self, index: int, timeout_s: float) -> KeySnapshot:
        if index <= 0:
            return self.read()
        deadline = time.monotonic() + timeout_s
        seen_index, seen_signature = self._seen
        # What the file looked like when `index` was handed out; unknown: look now.
        baseline = seen_signature if seen_index == index else None
        while True:
            expired = time.monotonic() >= deadline
            if baseline is None or self._signature() != baseline or expired:
                try:
                    snapshot = self.read()
                except ConfigError:
                    # An editor writing in place can be caught half-way; look again shortly.
                    if expired:
                        raise
                else:
                    if snapshot.index != index or baseline is not None or expired:
                        return snapshot
                    baseline = self._seen[1]
            time.sleep(min(self._poll_interval_s, max(0.0, deadline - time.monotonic())))

    def write(self, key: Key, version: int) -> int | None:
        name = key_name(key.public_key)
        with self._locked():
            generation, entries = self._load()
            if _version_of(entries.get(name)) != version:
                return None
            generation += 1
            entries[name] = {"version": generation, "key": wire.to_builtins(key)}
            self._write(generation, entries)
            return generation

    def write_batch(self, items: Sequence[tuple[Key, int]]) -> list[int | None]:
        """Every write under one lock and one rewrite of the file, at one new generation."""
        if not items:
            return []
        with self._locked():
            generation, entries = self._load()
            generation += 1
            written: list[int | None] = []
            for key, version in items:
                name = key_name(key.public_key)
                if _version_of(entries.get(name)) != version:
                    written.append(None)
                    continue
                entries[name] = {"version": generation, "key": wire.to_builtins(key)}
                written.append(generation)
            if any(version is not None for version in written):
                self._write(generation, entries)
            return written

    def delete(self, public_key: str, version: int) -> bool:
        name = key_name(public_key)
        with self._locked():
            generation, entries = self._load()
            if name not in entries:
                return True
            if _version_of(entries[name]) != version:
                return False
            del entries[name]
            self._write(generation + 1, entries)
            return True

    def close(self) -> None:
        pass

    def _locked(self) -> _FileLock:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        return _FileLock(self._lock_path)

    def _parse(self, name: str, item: object) -> StoredKey | None:
        version = _version_of(item)
        try:
            if version < 1 or not isinstance(item, dict):
                raise ValueError("has no version")
            key = check_name(name, wire.from_builtins(Key, item.get("key")))
        except (ValueError, WireError) as exc:
            log.warning("skipping the invalid key entry %r in %s: %s", name, self._path, exc)
            return None
        return StoredKey(key, version)

    def _signature(self) -> FileSignature | None:
        return file_signature(self._path)

    def _load(self) -> tuple[int, _Entries]:
        try:
            raw = self._path.read_bytes()
        except FileNotFoundError:
            return 1, {}
        except OSError as exc:
            raise RegistryError(f"cannot read the key ring {self._path}: {exc.strerror}") from None
        try:
            data: Any = json.loads(raw)
        except ValueError as exc:
            raise ConfigError(f"the key ring {self._path} is not valid JSON: {exc}") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT_VERSION:
            raise ConfigError(f"{self._path} is not a key ring this master knows")
        entries = data.get("keys", {})
        if not isinstance(entries, dict):
            raise ConfigError(f"the key ring {self._path} has no 'keys' table")
        generation = data.get("generation", 1)
        if not isinstance(generation, int) or generation < 1:
            generation = 1
        return generation, {str(name): item for name, item in entries.items()}

    def _write(self, generation: int, entries: _Entries) -> None:
        document = {
            "format": FORMAT_VERSION,
            "generation": generation,
            "keys": dict(sorted(entries.items())),
        }
        payload = json.dumps(document, indent=1) + "\n"
        try:
            write_atomically(self._path, payload.encode(), mode=0o600, durable=False)
        except OSError as exc:
            raise RegistryError(f"cannot write the key ring {self._path}: {exc.strerror}") from None


def _version_of(item: object) -> int:
    version = item.get("version") if isinstance(item, dict) else None
    return version if isinstance(version, int) and not isinstance(version, bool) else 0


class _FileLock:
    """An exclusive flock of the sidecar lock file, for one read-modify-write."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._file: Any = None

    def __enter__(self) -> None:
        self._file = self._path.open("a")
        fcntl.flock(self._file, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        self._file.close()
