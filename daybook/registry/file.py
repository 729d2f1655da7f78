"""The embedded registry: host patterns and their services in a local JSON file."""

from __future__ import annotations

import fcntl
import json
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from daybook.errors import ConfigError, DaybookError, RegistryError
from daybook.files import FileSignature, file_signature, write_atomically
from daybook.model.mappings import MappingTable, parse_services
from daybook.model.names import check_service
from daybook.model.patterns import is_valid_pattern
from daybook.model.pins import Pin
from daybook.registry.base import PinUpdate, ServicesUpdate, Snapshot

log = logging.getLogger(__name__)

FORMAT_VERSION = 1


@dataclass
class _Document:
    """The mappings file as loaded: pins stay raw JSON until read, so that an update of a
    mapping writes back a pin it could not parse rather than dropping it."""

    generation: int
    hosts: dict[str, list[str]]
    pins: dict[str, Any] = field(default_factory=dict)


class FileRegistry:
    """Mappings in one JSON file: `{"format": 1, "generation": N, "hosts": {pattern: [svc]},
    "pins": {service: {"service", "version", "previous", "hosts"}}}` (`pins` optional).

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
        return self._path.absolute().as_uri()

    def read(self) -> Snapshot:
        signature = self._signature()
        document = self._load()
        # Remember what the file looked like when this index was handed out, so a watcher
        # on it also wakes for a hand edit that left `generation` alone.
        self._seen = (document.generation, signature)
        mappings: MappingTable = {}
        for pattern, services in document.hosts.items():
            if not is_valid_pattern(pattern):
                log.warning("skipping invalid host pattern %r in %s", pattern, self._path)
                continue
            parsed = parse_services(",".join(services), context=f"{self._path}: {pattern}")
            if parsed:
                mappings[pattern.lower()] = parsed
        pins = {}
        for service, value in document.pins.items():
            pin = self._parse_pin(service, value)
            if pin is not None:
                pins[service] = pin
        return Snapshot(mappings=mappings, index=document.generation, pins=pins)

    def update(self, pattern: str, change: ServicesUpdate) -> tuple[str, ...]:
        with self._locked() as document:
            current = parse_services(",".join(document.hosts.get(pattern, [])))
            wanted = change(current)
            if wanted == current:
                return current
            if wanted:
                document.hosts[pattern] = list(wanted)
            else:
                document.hosts.pop(pattern, None)
            self._write(document)
            return wanted

    def update_pin(self, service: str, change: PinUpdate) -> Pin | None:
        check_service(service)
        with self._locked() as document:
            raw = document.pins.get(service)
            current = self._parse_pin(service, raw) if raw is not None else None
            wanted = change(current)
            if wanted == current and (wanted is not None or raw is None):
                return current
            if wanted is None:
                document.pins.pop(service, None)
            else:
                _check_pin_service(service, wanted)
                from daybook import wire  # only with pins: see _parse_pin

                document.pins[service] = wire.to_builtins(wanted)
            self._write(document)
            return wanted

    @contextmanager
    def _locked(self) -> Iterator[_Document]:
        """The file's content under the writers' lock, for one read-modify-write."""
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            lock = self._lock_path.open("a")
        except FileExistsError:  # what mkdir says of a file where the directory should be
            raise RegistryError(
                f"cannot lock mappings file {self._path}: {self._path.parent} is not a directory"
            ) from None
        except OSError as exc:
            raise RegistryError(f"cannot lock mappings file {self._path}: {_why(exc)}") from None
        with lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield self._load()

    def _parse_pin(self, service: str, value: Any) -> Pin | None:
        """A stored pin, or None (with a warning) when it is not one for `service`."""
        # The codec's import (~15 ms) is paid only where pins exist, not by every `map`
        # command and `pull` on a mappings file without them.
        from daybook import wire

        try:
            pin = wire.from_builtins(Pin, value)
        except DaybookError as exc:
            log.warning("skipping the pin of %r in %s: %s", service, self._path, exc)
            return None
        if pin.service != service:
            log.warning(
                "skipping the pin under %r in %s: it names service %r",
                service,
                self._path,
                pin.service,
            )
            return None
        return pin

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

    def _signature(self) -> FileSignature | None:
        try:
            return file_signature(self._path)
        except OSError as exc:  # a parent that is a file, or that this user cannot search
            raise RegistryError(f"cannot read mappings file {self._path}: {_why(exc)}") from None

    def _load(self) -> _Document:
        try:
            raw = self._path.read_bytes()
        except FileNotFoundError:
            return _Document(1, {})
        except OSError as exc:
            raise RegistryError(f"cannot read mappings file {self._path}: {_why(exc)}") from None
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
        pins = data.get("pins", {})
        if not isinstance(pins, dict):
            log.warning("ignoring the 'pins' of %s: not a table", self._path)
            pins = {}
        return _Document(generation, hosts, {str(k): v for k, v in pins.items()})

    def _write(self, document: _Document) -> None:
        content: dict[str, Any] = {
            "format": FORMAT_VERSION,
            "generation": document.generation + 1,
            "hosts": dict(sorted(document.hosts.items())),
        }
        if document.pins:  # a file that never had a pin keeps its old shape
            content["pins"] = dict(sorted(document.pins.items()))
        payload = json.dumps(content, indent=2) + "\n"
        try:
            # Mappings are not secret: readable by minions running as other users.
            write_atomically(self._path, payload.encode(), mode=0o644)
        except OSError as exc:
            raise RegistryError(f"cannot write mappings file {self._path}: {_why(exc)}") from None


def _check_pin_service(service: str, pin: Pin) -> None:
    if pin.service != service:
        raise ValueError(f"a pin of {pin.service!r} cannot be stored as the pin of {service!r}")


def _why(exc: OSError) -> str:
    return exc.strerror or str(exc)
