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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from daybook.model.names import is_valid_service, is_valid_version
from daybook.wire import MAX_MESSAGE_BYTES, Report, is_valid_digest, is_valid_id

log = logging.getLogger(__name__)

STATE_FILE = "minion-state.json"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class AppliedService:
    """A service whose store versions (by digest) were all installed by an earlier sync."""

    digest: str
    versions: tuple[str, ...]


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
                self._outbox.append(report.encode()[1])
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
                document = self._document()
            try:
                self._state_path.parent.mkdir(parents=True, exist_ok=True)
                _write_atomically(self._state_path, json.dumps(document).encode())
            except OSError as exc:
                # Losing this costs a store listing or a resend later, never a wrong answer.
                log.warning("cannot save the minion state in %s: %s", self._state_path, exc)

    # -- files ----------------------------------------------------------------------------------

    def _load(self) -> None:
        try:
            data: Any = json.loads(self._state_path.read_bytes())
        except FileNotFoundError:
            data = None
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable minion state %s: %s", self._state_path, exc)
            data = None
        if not isinstance(data, dict) or data.get("format") != FORMAT_VERSION:
            return
        self._reported = [s for s in data.get("reported", []) if _is_id(s)]
        self._outbox = _parse_outbox(data.get("outbox"))
        # Digests only vouch for the install dir they were taken in.
        if data.get("install_dir") == self._install_dir:
            self._services = _parse_services(data.get("services"))

    def _document(self) -> dict[str, Any]:
        return {
            "format": FORMAT_VERSION,
            "install_dir": self._install_dir,
            "services": {
                name: {"digest": entry.digest, "versions": list(entry.versions)}
                for name, entry in sorted(self._services.items())
            },
            "reported": list(self._reported),
            "outbox": [base64.b64encode(payload).decode() for payload in self._outbox],
        }


def _is_id(value: object) -> bool:
    return isinstance(value, str) and is_valid_id(value)


def _parse_outbox(value: object) -> list[bytes]:
    """Report payloads; they are validated like any wire message when they are resent."""
    if not isinstance(value, list):
        return []
    payloads = []
    for item in value:
        try:
            payload = base64.b64decode(item, validate=True) if isinstance(item, str) else b""
        except binascii.Error:
            continue
        if 0 < len(payload) <= MAX_MESSAGE_BYTES:
            payloads.append(payload)
    return payloads


def _parse_services(value: object) -> dict[str, AppliedService]:
    services: dict[str, AppliedService] = {}
    if not isinstance(value, dict):
        return services
    for name, entry in value.items():
        if not (isinstance(name, str) and is_valid_service(name) and isinstance(entry, dict)):
            continue
        digest, versions = entry.get("digest"), entry.get("versions")
        if not (isinstance(digest, str) and is_valid_digest(digest) and isinstance(versions, list)):
            continue
        if all(isinstance(v, str) and is_valid_version(v) for v in versions):
            services[name] = AppliedService(digest, tuple(versions))
    return services


def _write_atomically(path: Path, data: bytes) -> None:
    from daybook.files import write_atomically  # not at the top while minion/ is rewritten (#11)

    write_atomically(path, data, mode=0o600, durable=False)
