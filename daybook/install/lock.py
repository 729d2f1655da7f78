"""Exclusive locks held by a live process, on this host: one process at a time changes an
install dir, and one master at a time runs on a data dir."""

from __future__ import annotations

import fcntl
import logging
import os
import time
from pathlib import Path

from daybook.errors import LockError, LockHeldError
from daybook.install.os_errors import describe_os_error

log = logging.getLogger(__name__)

LOCK_NAME = ".daybook.lock"


class PidLock:
    """An exclusive flock on the file at `path`, which names the holder's pid for people
    (and whoever finds the lock held) to read; the kernel drops it if the holder dies.
    Held: waited for up to `timeout_s` (0: refused at once) with LockHeldError."""

    def __init__(self, path: Path, *, timeout_s: float) -> None:
        self._path = path
        self._timeout_s = timeout_s
        self._fd: int | None = None

    def acquire(self) -> None:
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except FileExistsError:  # what mkdir says of a file, or a dangling link, in its place
            raise LockError(f"{self._path.parent} is not a directory") from None
        except OSError as exc:
            raise LockError(
                f"cannot create the lock {self._path}: {describe_os_error(exc, self._path.parent)}"
            ) from exc
        try:
            self._wait_for(fd)
        except BaseException:
            os.close(fd)
            raise
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        except OSError as exc:
            # The pid is there for people to read; the flock is the lock. A full disk must
            # not turn into a lock that is never released, nor hide the install's own error.
            log.debug("cannot write the pid into %s: %s", self._path, exc)
        self._fd = fd

    def _wait_for(self, fd: int) -> None:
        deadline = time.monotonic() + self._timeout_s
        delay_s = 0.01
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    waited = f"waited {self._timeout_s:g} s"
                    raise LockHeldError(
                        f"another daybook process holds {self._path} ({waited})",
                        holder_pid=self.holder_pid(),
                    ) from None
                time.sleep(delay_s)
                delay_s = min(delay_s * 2, 0.5)

    def holder_pid(self) -> int | None:
        """The pid the holder wrote; None if none is readable (it is writing it right now)."""
        try:
            text = self._path.read_text(errors="replace").strip()
        except OSError:
            return None
        return int(text) if text.isdigit() else None

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing releases the flock
            self._fd = None

    def __enter__(self) -> PidLock:
        self.acquire()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.release()


class InstallLock(PidLock):
    """An exclusive flock on the install dir; the kernel drops it if the holder dies."""

    def __init__(self, install_dir: Path, *, timeout_s: float = 600.0) -> None:
        super().__init__(install_dir / LOCK_NAME, timeout_s=timeout_s)
