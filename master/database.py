"""The results database: syncs, expected hosts, reports and host state in SQLite.

One writer (the master loop) in WAL mode, so readers (the HTTP API, a shell with sqlite3)
never block it. Reports are stored as their wire payload and decoded through the wire
module on the way out, so what comes back from disk is validated like what came off the
network. Writes are batched: the loop commits once per batch of messages.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from daybook import wire
from daybook.errors import FleetError, WireError
from daybook.model.fleet import HostStatus
from daybook.model.ids import is_valid_digest
from daybook.model.results import Report
from daybook.model.state import EncodedState
from daybook.model.sync import Answered, Sync, Tally, is_newer

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS syncs (
    sync_id    TEXT PRIMARY KEY,
    target     TEXT NOT NULL,
    origin     TEXT NOT NULL,
    issued_at  REAL NOT NULL,
    request_id TEXT,
    deadline   REAL,
    closed_at  REAL
);
CREATE INDEX IF NOT EXISTS syncs_issued ON syncs (issued_at);
CREATE INDEX IF NOT EXISTS syncs_request ON syncs (request_id) WHERE request_id IS NOT NULL;
CREATE TABLE IF NOT EXISTS expected (
    sync_id TEXT NOT NULL,
    host    TEXT NOT NULL,
    PRIMARY KEY (sync_id, host)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS reports (
    report_id   TEXT PRIMARY KEY,
    sync_id     TEXT NOT NULL,
    host        TEXT NOT NULL,
    ok          INTEGER NOT NULL,
    finished_at REAL NOT NULL,
    received_at REAL NOT NULL,
    payload     BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS reports_sync ON reports (sync_id, host);
-- The expected hosts still silent when a sync closed, and since when each was down.
CREATE TABLE IF NOT EXISTS silent (
    sync_id    TEXT NOT NULL,
    host       TEXT NOT NULL,
    down_since REAL,
    PRIMARY KEY (sync_id, host)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS hosts (
    host           TEXT PRIMARY KEY,
    last_seen      REAL NOT NULL,
    boot_id        TEXT,
    started_at     REAL,
    last_report_id TEXT
);
"""
# Version 1 databases lack what a sync's end is recorded with; nothing else changed.
_UPGRADE_FROM_1 = """
ALTER TABLE syncs ADD COLUMN deadline REAL;
ALTER TABLE syncs ADD COLUMN closed_at REAL;
"""
_OPEN_INDEX = "CREATE INDEX IF NOT EXISTS syncs_open ON syncs (issued_at) WHERE closed_at IS NULL"
_SYNC_COLUMNS = "sync_id, target, origin, issued_at, request_id, deadline, closed_at"
SyncRow = tuple[str, str, str, float, str | None, float | None, float | None]


def _read_sync(db: sqlite3.Connection, row: SyncRow, path: Path, *, reports: bool = True) -> Sync:
    sync_id, target, origin, issued_at, request_id, deadline, closed_at = row
    expected = tuple(
        host
        for (host,) in db.execute(
            "SELECT host FROM expected WHERE sync_id = ? ORDER BY host", (sync_id,)
        )
    )
    results: dict[str, Report] = {}
    if reports:
        for (payload,) in db.execute(
            "SELECT payload FROM reports WHERE sync_id = ? ORDER BY finished_at", (sync_id,)
        ):
            report = _decode_report(payload, path)
            if report is not None and is_newer(report, results.get(report.host)):
                results[report.host] = report
    silent = dict(
        db.execute(
            "SELECT host, down_since FROM silent WHERE sync_id = ? ORDER BY host", (sync_id,)
        )
    )
    return Sync(
        sync_id=sync_id,
        target=target,
        origin=origin,
        issued_at=issued_at,
        expected=expected,
        results=dict(sorted(results.items())),
        request_id=request_id,
        deadline=deadline,
        closed_at=closed_at,
        silent=silent,
    )


def _decode_report(payload: bytes, path: Path) -> Report | None:
    try:
        return wire.decode(Report, bytes(payload))
    except WireError as exc:
        log.warning("skipping an unreadable report in %s: %s", path, exc)
        return None


class ResultsDatabase:
    """Durable history for the master. Used from the master loop's thread only."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, isolation_level=None)
            self._db.execute("PRAGMA journal_mode = WAL")
            # WAL with NORMAL is durable across a process crash (the master being killed);
            # only an OS crash can lose the last commits.
            self._db.execute("PRAGMA synchronous = NORMAL")
            self._db.execute("PRAGMA busy_timeout = 5000")
            self._db.executescript(_SCHEMA)
            self._db.execute("BEGIN")
            self._check_schema_version()
            self._db.execute(_OPEN_INDEX)
        except (OSError, sqlite3.Error) as exc:
            raise FleetError(f"cannot open the results database {path}: {exc}") from None

    def _check_schema_version(self) -> None:
        stored = self._meta("schema")
        if stored is not None and int(stored) == 1:
            for statement in filter(str.strip, _UPGRADE_FROM_1.split(";")):
                self._db.execute(statement)
            log.info("upgraded the results database %s to schema %d", self.path, SCHEMA_VERSION)
            stored = None
        if stored is None:
            self._set_meta("schema", str(SCHEMA_VERSION).encode())
        elif int(stored) != SCHEMA_VERSION:
            raise FleetError(
                f"{self.path} has schema version {int(stored)}; this master knows {SCHEMA_VERSION}"
            )

    def commit(self) -> None:
        """End the current batch and start the next one.

        A statement that fails with SQLITE_FULL or an I/O error rolls its whole batch back
        (SQLite does that by itself), and the failure reached whoever ran it; the next
        batch still starts here, so that one full disk does not fail every commit after it.
        """
        try:
            if self._db.in_transaction:
                self._db.execute("COMMIT")
        finally:
            if not self._db.in_transaction:
                self._db.execute("BEGIN")

    def close(self) -> None:
        try:
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            log.warning("could not commit the results database on close: %s", exc)
        self._db.close()

    # -- meta: the epoch and the last desired state ----------------------------------------------

    def _meta(self, key: str) -> bytes | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else bytes(row[0])

    def _set_meta(self, key: str, value: bytes) -> None:
        self._db.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    def next_epoch(self) -> int:
        """A new epoch for this master run: after every earlier one, and committed at once."""
        previous = self._meta("epoch")
        epoch = max(int(previous or 0) + 1, int(time.time() * 1000))
        self._set_meta("epoch", str(epoch).encode())
        self.commit()
        return epoch

    def save_state(self, state: EncodedState, sync_id: str) -> None:
        """Remember the desired state, so a restart can serve it before the watchers answer."""
        self._set_meta("state", state.blob)
        self._set_meta("state_digest", state.digest.encode())
        self._set_meta("state_sync_id", sync_id.encode())

    def load_state(self) -> tuple[EncodedState, str] | None:
        blob = self._meta("state")
        digest = self._meta("state_digest")
        sync_id = self._meta("state_sync_id")
        if blob is None or digest is None or sync_id is None:
            return None
        state = EncodedState(blob, digest.decode())
        if not is_valid_digest(state.digest):
            return None
        try:
            wire.decode_state(state)
        except WireError as exc:
            log.warning("ignoring the stored desired state in %s: %s", self.path, exc)
            return None
        return state, sync_id.decode()

    # -- syncs and reports ----------------------------------------------------------------------

    def add_sync(self, sync: Sync) -> None:
        self._db.execute(
            f"INSERT OR REPLACE INTO syncs ({_SYNC_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",  # noqa: S608
            (
                sync.sync_id,
                sync.target,
                sync.origin,
                sync.issued_at,
                sync.request_id,
                sync.deadline,
                sync.closed_at,
            ),
        )
        self._db.executemany(
            "INSERT OR IGNORE INTO expected (sync_id, host) VALUES (?, ?)",
            [(sync.sync_id, host) for host in sync.expected],
        )

    def close_sync(self, sync: Sync) -> None:
        """Record how a sync ended: when, and which expected hosts were silent then."""
        self._db.execute(
            "UPDATE syncs SET closed_at = ? WHERE sync_id = ?", (sync.closed_at, sync.sync_id)
        )
        self._db.executemany(
            "INSERT OR REPLACE INTO silent (sync_id, host, down_since) VALUES (?, ?, ?)",
            [(sync.sync_id, host, since) for host, since in sync.silent.items()],
        )

    def close_forgotten(self, now: float, held: list[str]) -> int:
        """Close, at `now`, the open syncs the loop no longer holds whose deadline passed (or
        that never had one): a master restarted, or a busy fleet pushed them out of memory.
        Their silent hosts are the expected ones with no answer; since when each was down is
        not known. Returns how many were closed."""
        marks = ",".join("?" * len(held))
        rows = self._db.execute(
            "SELECT sync_id FROM syncs WHERE closed_at IS NULL "  # noqa: S608
            f"AND (deadline IS NULL OR deadline <= ?) AND sync_id NOT IN ({marks})",
            (now, *held),
        ).fetchall()
        for (sync_id,) in rows:
            self._db.execute(
                "INSERT OR IGNORE INTO silent (sync_id, host, down_since) "
                "SELECT e.sync_id, e.host, NULL FROM expected e WHERE e.sync_id = ? "
                "AND NOT EXISTS (SELECT 1 FROM reports r "
                "WHERE r.sync_id = e.sync_id AND r.host = e.host)",
                (sync_id,),
            )
            self._db.execute("UPDATE syncs SET closed_at = ? WHERE sync_id = ?", (now, sync_id))
        return len(rows)

    def add_report(self, report: Report, received_at: float, payload: bytes | None = None) -> bool:
        """Store a report; False if this report id was stored before (a resent duplicate).

        `payload` is the report's wire payload when it came off the wire already validated,
        which saves encoding it again.
        """
        cursor = self._db.execute(
            "INSERT OR IGNORE INTO reports "
            "(report_id, sync_id, host, ok, finished_at, received_at, payload) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                report.report_id,
                report.sync_id,
                report.host,
                int(report.ok),
                report.finished_at,
                received_at,
                payload if payload is not None else wire.payload(report),
            ),
        )
        return cursor.rowcount == 1

    def load_sync(self, sync_id: str) -> Sync | None:
        row = self._db.execute(
            f"SELECT {_SYNC_COLUMNS} FROM syncs WHERE sync_id = ?",  # noqa: S608
            (sync_id,),
        ).fetchone()
        return None if row is None else self._sync_from_row(row)

    def sync_for_request(self, request_id: str) -> Sync | None:
        row = self._db.execute(
            f"SELECT {_SYNC_COLUMNS} FROM syncs WHERE request_id = ?",  # noqa: S608
            (request_id,),
        ).fetchone()
        return None if row is None else self._sync_from_row(row)

    def recent_answers(
        self, limit: int, max_answers: int | None = None
    ) -> list[tuple[Sync, dict[str, Answered]]]:
        """The latest `limit` syncs, oldest first, without their reports, each with every
        host's latest answer: read from the reports' columns, without decoding one. With
        `max_answers`, older syncs are left out once the newer ones hold that many answers
        (the newest always comes), as the sync book would drop them.

        A restarted master holds these again. Decoding them took 1.2 s for 64 syncs of
        1,000 hosts (13 us a report, checked), and ten times that at 10,000 hosts, before
        the master listened; `load_sync` decodes a sync's reports when someone asks.
        """
        rows: list[SyncRow] = self._db.execute(
            f"SELECT {_SYNC_COLUMNS} FROM syncs ORDER BY issued_at DESC LIMIT ?",  # noqa: S608
            (limit,),
        ).fetchall()
        if max_answers is not None and rows:
            ids = [row[0] for row in rows]
            sizes = dict(
                self._db.execute(
                    "SELECT sync_id, count(DISTINCT host) FROM reports "  # noqa: S608
                    f"WHERE sync_id IN ({','.join('?' * len(ids))}) GROUP BY sync_id",
                    ids,
                )
            )
            held = 0
            for kept, row in enumerate(rows):
                held += sizes.get(row[0], 0)
                if kept and held > max_answers:
                    del rows[kept:]
                    break
        rows.reverse()
        answers = _latest_answers(self._db, [row[0] for row in rows])
        return [
            (_read_sync(self._db, row, self.path, reports=False), answers[row[0]]) for row in rows
        ]

    def _sync_from_row(self, row: SyncRow) -> Sync:
        return _read_sync(self._db, row, self.path)

    def _decode_report(self, payload: bytes) -> Report | None:
        return _decode_report(payload, self.path)

    # -- hosts ----------------------------------------------------------------------------------

    def save_hosts(self, hosts: list[HostStatus]) -> None:
        self._db.executemany(
            "INSERT INTO hosts (host, last_seen, boot_id, started_at, last_report_id) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT (host) DO UPDATE SET "
            "last_seen = excluded.last_seen, boot_id = excluded.boot_id, "
            "started_at = excluded.started_at, last_report_id = excluded.last_report_id",
            [
                (
                    r.host,
                    r.last_seen,
                    r.boot_id,
                    r.started_at,
                    r.last_report.report_id if r.last_report else None,
                )
                for r in hosts
            ],
        )

    def load_hosts(self) -> list[HostStatus]:
        """Every host as last saved; up until its heartbeats are overdue."""
        rows = self._db.execute(
            "SELECT h.host, h.last_seen, h.boot_id, h.started_at, r.payload "
            "FROM hosts h LEFT JOIN reports r ON r.report_id = h.last_report_id "
            "ORDER BY h.host"
        ).fetchall()
        return [
            HostStatus(
                host=host,
                up=True,
                last_seen=last_seen,
                boot_id=boot_id,
                started_at=started_at,
                last_report=None if payload is None else self._decode_report(payload),
            )
            for host, last_seen, boot_id, started_at, payload in rows
        ]

    # -- housekeeping ---------------------------------------------------------------------------

    def prune(self, keep_syncs: int) -> int:
        """Forget all but the latest `keep_syncs` syncs and their reports; return how many went.

        A report still named as some host's latest is kept, so `status` never loses it.
        """
        cutoff = self._db.execute(
            "SELECT issued_at FROM syncs ORDER BY issued_at DESC LIMIT 1 OFFSET ?",
            (keep_syncs,),
        ).fetchone()
        if cutoff is None:
            return 0
        self._db.execute(
            "DELETE FROM silent WHERE sync_id IN (SELECT sync_id FROM syncs WHERE issued_at <= ?)",
            cutoff,
        )
        self._db.execute(
            "DELETE FROM expected WHERE sync_id IN "
            "(SELECT sync_id FROM syncs WHERE issued_at <= ?)",
            cutoff,
        )
        self._db.execute(
            "DELETE FROM reports WHERE sync_id IN "
            "(SELECT sync_id FROM syncs WHERE issued_at <= ?) "
            "AND report_id NOT IN "
            "(SELECT last_report_id FROM hosts WHERE last_report_id IS NOT NULL)",
            cutoff,
        )
        removed = self._db.execute("DELETE FROM syncs WHERE issued_at <= ?", cutoff).rowcount
        return removed

    def counts(self) -> dict[str, int]:
        return {
            table: self._db.execute(f"SELECT count(*) FROM {table}").fetchone()[0]  # noqa: S608
            for table in ("syncs", "reports", "hosts")
        }


class ResultsReader:
    """Read-only queries for threads other than the loop's (the HTTP API).

    Each query opens its own read-only connection and reads in one transaction: WAL mode
    lets it read while the loop writes, and it sees whole committed batches only.
    """

    def __init__(self, path: Path, timeout_s: float = 5.0) -> None:
        self.path = path
        self._timeout_s = timeout_s

    @contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        try:
            db = sqlite3.connect(
                f"{self.path.as_uri()}?mode=ro",
                uri=True,
                timeout=self._timeout_s,
                isolation_level=None,
                check_same_thread=True,
            )
        except sqlite3.Error as exc:
            raise FleetError(f"cannot read the results database {self.path}: {exc}") from None
        try:
            db.execute("BEGIN")
            yield db
        except sqlite3.Error as exc:
            raise FleetError(f"cannot read the results database {self.path}: {exc}") from None
        finally:
            db.close()

    def load_sync(self, sync_id: str) -> Sync | None:
        with self._reading() as db:
            row = db.execute(
                f"SELECT {_SYNC_COLUMNS} FROM syncs WHERE sync_id = ?",  # noqa: S608
                (sync_id,),
            ).fetchone()
            return None if row is None else _read_sync(db, row, self.path)

    def sync_tallies(self, limit: int) -> list[tuple[Sync, Tally]]:
        """The latest `limit` syncs (without their answers) and the tally of each, newest
        first, counted without decoding any report."""
        with self._reading() as db:
            rows: list[SyncRow] = db.execute(
                f"SELECT {_SYNC_COLUMNS} FROM syncs "  # noqa: S608
                "ORDER BY issued_at DESC, sync_id LIMIT ?",
                (limit,),
            ).fetchall()
            if not rows:
                return []
            ids = [row[0] for row in rows]
            expected = _hosts_by_sync(db, "SELECT sync_id, host FROM expected", ids)
            silent = _hosts_by_sync(db, "SELECT sync_id, host FROM silent", ids)
            latest = _latest_answers(db, ids)
        return [_tallied(row, expected[row[0]], silent[row[0]], latest[row[0]]) for row in rows]


def _latest_answers(db: sqlite3.Connection, ids: list[str]) -> dict[str, dict[str, Answered]]:
    """Each host's latest answer to each of the syncs `ids`, without decoding a report."""
    latest: dict[str, dict[str, Answered]] = {sync_id: {} for sync_id in ids}
    # SQLite takes the bare columns from the row holding max(finished_at): each host's
    # latest report, as the sync book keeps it.
    for sync_id, host, ok, finished_at in db.execute(
        "SELECT sync_id, host, ok, max(finished_at) FROM reports "  # noqa: S608
        f"WHERE sync_id IN ({','.join('?' * len(ids))}) GROUP BY sync_id, host",
        ids,
    ):
        latest[sync_id][host] = Answered(bool(ok), finished_at)
    return latest


def _hosts_by_sync(db: sqlite3.Connection, select: str, ids: list[str]) -> dict[str, set[str]]:
    """`select` (sync ids and hosts) for the syncs `ids`, as a set of hosts per sync."""
    hosts: dict[str, set[str]] = {sync_id: set() for sync_id in ids}
    marks = ",".join("?" * len(ids))
    for sync_id, host in db.execute(f"{select} WHERE sync_id IN ({marks})", ids):
        hosts[sync_id].add(host)
    return hosts


def _tallied(
    row: SyncRow, expected: set[str], silent: set[str], answers: dict[str, Answered]
) -> tuple[Sync, Tally]:
    sync_id, target, origin, issued_at, request_id, deadline, closed_at = row
    sync = Sync(
        sync_id,
        target,
        origin,
        issued_at,
        tuple(sorted(expected)),
        request_id=request_id,
        deadline=deadline,
        closed_at=closed_at,
        silent=dict.fromkeys(sorted(silent)),
    )
    tally = Tally(
        expected=len(expected),
        answered=sum(1 for host in expected if host in answers),
        failed=sum(1 for answer in answers.values() if not answer.ok),
        silent=len(silent),
    )
    return sync, tally
