"""What a minion remembers across syncs and restarts, in one file in its data dir.

Per service, the digest of the versions it last installed completely, so an unchanged
service costs no store request; the sync ids it already reported; and its latest reports
(their wire payloads), resent when the master restarts, because a report the master
received but had not yet recorded when it died is otherwise lost.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import threading
from collections.abc import Iterable
from contextlib import suppress
from pathlib import Path
from typing import Any

from daybook import wire
from daybook.errors import WireError
from daybook.files import write_atomically
from daybook.model.ids import is_valid_digest, is_valid_id
from daybook.model.names import is_valid_service, is_valid_version
from daybook.model.results import Report
from daybook.model.rules import checked, record
from daybook.wire import MAX_MESSAGE_BYTES

log = logging.getLogger(__name__)

STATE_FILE = "minion-state.json"
FORMAT_VERSION = 1


@record
class AppliedService:
    """A service whose store versions (by digest) were all installed by an earlier sync."""

    digest: str = checked(is_valid_digest)
    versions: tuple[str, ...] = checked(is_valid_version)


class MinionMemory:
    """Thread-safe: the sync worker records, the socket thread reads the outbox, and
    `save` may run on yet another thread. Recording is in memory; `save` writes the file."""

    def __init__(
        self,
        data_dir: Path,
        install_dir: Path,
        *,
        keep_reports: int = 8,
        keep_reported: int = 256,
    ) -> None:
        self._state_path = data_dir / STATE_FILE
        self._install_dir = str(install_dir.absolute())
        self._keep_reports = keep_reports
        self._keep_reported = keep_reported
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._dirty = False
        self._services: dict[str, AppliedService] = {}
        self._reported: list[str] = []
        self._outbox: list[bytes] = []
        self._load()

    # -- reading --------------------------------------------------------------------------------

    def applied(self, service: str) -> AppliedService | None:
        with self._lock:
            return self._services.get(service)

    def reported(self) -> list[str]:
        with self._lock:
            return list(self._reported)

    @property
    def dirty(self) -> bool:
        """Whether something was recorded that `save` has not written yet."""
        with self._lock:
            return self._dirty

    def outbox(self) -> list[bytes]:
        """The latest reports' payloads, oldest first."""
        with self._lock:
            return list(self._outbox)

    # -- writing --------------------------------------------------------------------------------

    def record(
        self,
        applied: dict[str, AppliedService | None],
        reports: Iterable[Report],
    ) -> None:
        """Note services applied (None forgets one) and reports sent; `save` persists it."""
        reports = list(reports)
        with self._lock:
            for service, entry in applied.items():
                if entry is None:
                    self._services.pop(service, None)
                else:
                    self._services[service] = entry
            for report in reports:
                if report.sync_id not in self._reported:
                    self._reported.append(report.sync_id)
                self._outbox.append(wire.payload(report))
            del self._reported[: -self._keep_reported]
            del self._outbox[: -self._keep_reports]
            self._dirty = self._dirty or bool(applied or reports)

    def save(self) -> None:
        """Write what was recorded since the last save, if anything."""
        with self._write_lock:
            with self._lock:
                if not self._dirty:
                    return
                self._dirty = False
                contents = self._contents()
            try:
                self._state_path.parent.mkdir(parents=True, exist_ok=True)
                _write_atomically(self._state_path, wire.to_json(contents))
            except OSError as exc:
                # Losing this costs a store listing or a resend later, never a wrong answer.
                log.warning("cannot save the minion state in %s: %s", self._state_path, exc)

    # -- files ----------------------------------------------------------------------------------

    def _load(self) -> None:
        try:
            document: Any = json.loads(self._state_path.read_bytes())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable minion state %s: %s", self._state_path, exc)
            return
        if not isinstance(document, dict) or document.get("format") != FORMAT_VERSION:
            return
        # Entry by entry: one damaged entry costs a store listing or a resend later, never
        # the rest of what the minion remembers.
        self._reported = [s for s in _listed(document, "reported") if _is_id(s)]
        self._outbox = [p for p in map(_payload, _listed(document, "outbox")) if p is not None]
        # Digests only vouch for the install dir they were taken in.
        if document.get("install_dir") == self._install_dir:
            self._services = _applied_services(document.get("services"))

    def _contents(self) -> dict[str, Any]:
        # Encoded by the wire module: services as their fields, report payloads in base64.
        return {
            "format": FORMAT_VERSION,
            "install_dir": self._install_dir,
            "services": dict(sorted(self._services.items())),
            "reported": self._reported,
            "outbox": self._outbox,
        }


def _listed(document: dict[str, Any], key: str) -> list[Any]:
    value = document.get(key)
    return value if isinstance(value, list) else []


def _is_id(value: object) -> bool:
    return isinstance(value, str) and is_valid_id(value)


def _payload(value: object) -> bytes | None:
    """A saved report payload; it is validated like any wire message when it is resent."""
    try:
        payload = base64.b64decode(value, validate=True) if isinstance(value, str) else b""
    except binascii.Error:
        return None
    return payload if 0 < len(payload) <= MAX_MESSAGE_BYTES else None


def _applied_services(value: object) -> dict[str, AppliedService]:
    services: dict[str, AppliedService] = {}
    for name, entry in value.items() if isinstance(value, dict) else ():
        if isinstance(name, str) and is_valid_service(name):
            with suppress(WireError):
                services[name] = wire.from_builtins(AppliedService, entry)
    return services


def _write_atomically(path: Path, data: bytes) -> None:
    write_atomically(path, data, mode=0o600, durable=False)
