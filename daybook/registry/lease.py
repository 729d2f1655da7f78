"""The leader lease of the embedded (file) registry: an flock the kernel drops when its
holder dies, and a term counter beside it.

Two files beside the mappings file:

* `<mappings>.leader`, the lock: the leader holds an exclusive `flock` on an open
  descriptor of it for its whole term. The kernel releases it the moment the process dies
  (SIGKILL included), so a standby's next `acquire` succeeds at once. The file is never
  replaced, since a lock lives on an inode.
* `<mappings>.leader.json`, the state: the newest term's number, holder and start, replaced
  atomically (and fsynced) by each new holder while it holds the lock, so the number only
  grows across holders and survives restarts. Readers never take the exclusive lock.

`leader()` tells a held lease from a stale state file by trying a non-blocking *shared*
lock on the lock file: it is refused exactly while someone holds the exclusive one. That
probe lasts microseconds, but an `acquire` landing inside it is refused as if the lease
were held; callers try again anyway, as they do when it is.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from daybook.errors import RegistryError
from daybook.files import write_atomically
from daybook.model.leadership import Term

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
DEFAULT_POLL_INTERVAL_S = 0.1


class FileLeadership:
    """`Leadership` for the file registry at `mappings_path` (see the module docstring).

    `depose` does nothing: the lease has no handle another process could end. A dead
    holder frees it at once by itself; a live but stuck one (paused, say) keeps it, and
    safely so, since it cannot lead two ways at once.
    """

    def __init__(
        self, mappings_path: Path, *, poll_interval_s: float = DEFAULT_POLL_INTERVAL_S
    ) -> None:
        self._lock_path = mappings_path.with_name(mappings_path.name + ".leader")
        self._state_path = mappings_path.with_name(mappings_path.name + ".leader.json")
        self._poll_interval_s = poll_interval_s
        self._fd: int | None = None
        self._term: Term | None = None

    @property
    def lock_path(self) -> Path:
        return self._lock_path

    @property
    def ttl_s(self) -> float:
        return float("inf")

    @property
    def term(self) -> Term | None:
        return self._term

    def acquire(self, holder: str) -> Term | None:
        if self._term is not None and self.renew():
            return self._term
        fd = self._open_lock()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        try:
            number = self._read_state().get("term", 0) + 1
            term = Term(number=number, holder=holder, since=time.time())
            self._write_state(term)
        except BaseException:
            os.close(fd)  # closing the descriptor drops the lock
            raise
        self._fd, self._term = fd, term
        log.info("took the leader lease %s: term %d", self._lock_path, number)
        return term

    def renew(self) -> bool:
        """True while this instance holds the lock on the file the path still names and
        the state still shows its term (nobody removed or rewrote them)."""
        term, fd = self._term, self._fd
        if term is None or fd is None:
            return False
        try:
            same_file = os.fstat(fd).st_ino == self._lock_path.stat().st_ino
        except FileNotFoundError:
            same_file = False
        if same_file and self._read_state().get("term") == term.number:
            return True
        log.warning("lost the leader lease %s (term %d)", self._lock_path, term.number)
        self._drop()
        return False

    def release(self) -> None:
        if self._term is not None:
            log.info("released the leader lease %s (term %d)", self._lock_path, self._term.number)
        self._drop()

    def leader(self) -> Term | None:
        if not self._held():
            return None
        state = self._read_state()
        if not state.get("term"):
            return None  # taken a moment ago, its state not yet written
        return Term(
            number=int(state["term"]),
            holder=str(state.get("holder", "")),
            since=float(state.get("since", 0.0)),
        )

    def watch(self, index: int, timeout_s: float) -> tuple[int, Term | None]:
        """Polls the local files: the index is 2 x term while held, 2 x term + 1 once
        released, so it grows with every change."""
        deadline = time.monotonic() + timeout_s
        while True:
            current = self.leader()
            number = current.number if current else self._read_state().get("term", 0)
            now_index = 2 * int(number) + (0 if current else 1)
            if index <= 0 or now_index != index or time.monotonic() >= deadline:
                return now_index, current
            time.sleep(min(self._poll_interval_s, max(0.0, deadline - time.monotonic())))

    def depose(self, term: Term) -> None:
        pass  # see the class docstring

    def close(self) -> None:
        self._drop()

    # -- files -------------------------------------------------------------------------------

    def _drop(self) -> None:
        fd, self._fd, self._term = self._fd, None, None
        if fd is not None:
            os.close(fd)

    def _open_lock(self) -> int:
        try:
            self._lock_path.parent.mkdir(parents=True, exist_ok=True)
            return os.open(self._lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise RegistryError(
                f"cannot open the leader lease {self._lock_path}: {exc.strerror}"
            ) from None

    def _held(self) -> bool:
        """Whether some process holds the exclusive lock (see the module docstring)."""
        try:
            fd = os.open(self._lock_path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)  # also drops the shared lock, if it was granted
        return False

    def _read_state(self) -> dict[str, Any]:
        try:
            data: Any = json.loads(self._state_path.read_bytes())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise RegistryError(
                f"the leader state {self._state_path} is unreadable ({exc}); the term counter "
                "must not restart, so fix or remove it knowingly"
            ) from None
        if not isinstance(data, dict) or not isinstance(data.get("term", 0), int):
            raise RegistryError(f"the leader state {self._state_path} holds no term counter")
        return data

    def _write_state(self, term: Term) -> None:
        document = {
            "format": FORMAT_VERSION,
            "term": term.number,
            "holder": term.holder,
            "since": term.since,
            "pid": os.getpid(),
        }
        payload = (json.dumps(document, indent=2) + "\n").encode()
        # Durable, name included: a counter that went back after a crash could fence nobody.
        write_atomically(self._state_path, payload, mode=0o644, fsync_dir=True)
