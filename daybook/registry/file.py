"""The embedded registry: host patterns and their services in a local JSON file."""

from __future__ import annotations

import fcntl
import json
import logging
import time
from pathlib import Path
from typing import Any

from daybook.errors import ConfigError, RegistryError
from daybook.files import write_atomically
from daybook.model.mappings import MappingTable, parse_services
from daybook.model.patterns import is_valid_pattern
from daybook.registry.base import ServicesUpdate, Snapshot

log = logging.getLogger(__name__)

FORMAT_VERSION = 1


class FileRegistry:
    """Mappings in one JSON file: `{"format": 1, "generation": N, "hosts": {pattern: [svc]}}`.

    Writers serialise on an flock of a sidecar lock file and replace the file atomically, so
    readers never see half a file and two writers never lose an update. `generation` is the
    change index; it starts at 1 for a missing file so that 0 always means "answer now".
    """

    def __init__(self, path: Path, *, poll_interval_s: float = 0.2) -> None:
        self._path = path
        self._lock_path = path.with_name(path.name + ".lock")
        self._poll_interval_s = poll_interval_s
        self._seen: tuple[int, tuple[int, int, int] | None] = (0, None)

    @property
    def url(self) -> str:
        return f"file://{self._path}"

    def read(self) -> Snapshot:
        signature = self._signature()
        generation, hosts = self._load()
        # Remember what the file looked like when this index was handed out, so a watcher
        # on it also wakes for a hand edit that left `generation` alone.
        self._seen = (generation, signature)
        mappings: MappingTable = {}
        for pattern, services in hosts.items():
            if not is_valid_pattern(pattern):
                log.warning("skipping invalid host pattern %r in %s", pattern, self._path)
                continue
            parsed = parse_services(",".join(services), context=f"{self._path}: {pattern}")
            if parsed:
                mappings[pattern.lower()] = parsed
        return Snapshot(mappings=mappings, index=generation)

    def update(self, pattern: str, change: ServicesUpdate) -> tuple[str, ...]:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock_path.open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            generation, hosts = self._load()
            current = parse_services(",".join(hosts.get(pattern, [])))
            wanted = change(current)
            if wanted == current:
                return current
            if wanted:
                hosts[pattern] = list(wanted)
            else:
                hosts.pop(pattern, None)
            self._write(generation + 1, hosts)
            return wanted

    def watch(self, index: int, timeout_s: float) -> Snapshot:
        deadline = time.monotonic() + timeout_s
        seen_index, seen_signature = self._seen
        signature = seen_signature if seen_index == index else self._signature()
        while True:
            try:
                snapshot = self.read()
            except ConfigError:
                # An editor writing in place can be caught half-way; look again shortly.
                if time.monotonic() >= deadline:
                    raise
            else:
                changed = snapshot.index > index or self._seen[1] != signature
                if index <= 0 or changed or time.monotonic() >= deadline:
                    return snapshot
            time.sleep(min(self._poll_interval_s, max(0.0, deadline - time.monotonic())))

    def close(self) -> None:
        pass

    def _signature(self) -> tuple[int, int, int] | None:
        try:
            st = self._path.stat()
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def _load(self) -> tuple[int, dict[str, list[str]]]:
        try:
            raw = self._path.read_bytes()
        except FileNotFoundError:
            return 1, {}
        except OSError as exc:
            raise RegistryError(f"cannot read mappings file {self._path}: {exc.strerror}") from None
        try:
            data: Any = json.loads(raw)
        except ValueError as exc:
            raise ConfigError(f"mappings file {self._path} is not valid JSON: {exc}") from None
        if not isinstance(data, dict) or not isinstance(data.get("hosts", {}), dict):
            raise ConfigError(f"mappings file {self._path} has no 'hosts' table")
        generation = data.get("generation", 1)
        if not isinstance(generation, int) or generation < 1:
            generation = 1
        hosts: dict[str, list[str]] = {}
        for pattern, value in data.get("hosts", {}).items():
            services = value.split(",") if isinstance(value, str) else value
            if not isinstance(services, list) or not all(isinstance(s, str) for s in services):
                log.warning(
                    "skipping pattern %r in %s: services are not a list", pattern, self._path
                )
                continue
            hosts[str(pattern)] = services
        return generation, hosts

    def _write(self, generation: int, hosts: dict[str, list[str]]) -> None:
        document = {
            "format": FORMAT_VERSION,
            "generation": generation,
            "hosts": dict(sorted(hosts.items())),
        }
        payload = json.dumps(document, indent=2) + "\n"
        # Mappings are not secret: readable by minions running as other users.
        write_atomically(self._path, payload.encode(), mode=0o644)
