"""The install lock: one process at a time changes an install dir, on this host."""

from __future__ import annotations

import fcntl
import logging
import os
import time
from pathlib import Path

from daybook.errors import LockError
from daybook.install.os_errors import describe_os_error

log = logging.getLogger(__name__)

LOCK_NAME = ".daybook.lock"


class InstallLock:
    """An exclusive flock on the install dir; the kernel drops it if the holder dies."""

    def __init__(self, install_dir: Path, *, timeout_s: float = 600.0) -> None:
        self._path = install_dir / LOCK_NAME
        self._timeout_s = timeout_s
        self._fd: int | None = None

    def __enter__(self) -> InstallLock:
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except FileExistsError:  # what mkdir says of a file, or a dangling link, in its place
            raise LockError(f"the install dir {self._path.parent} is not a directory") from None
        except OSError as exc:
            raise LockError(
                f"cannot create the lock {self._path}: {describe_os_error(exc, self._path.parent)}"
            ) from exc
        try:
            self._acquire(fd)
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
        return self

    def _acquire(self, fd: int) -> None:
        deadline = time.monotonic() + self._timeout_s
        delay_s = 0.01
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise LockError(
                        f"another daybook process holds {self._path} (waited {self._timeout_s:g} s)"
                    ) from None
                time.sleep(delay_s)
                delay_s = min(delay_s * 2, 0.5)

    def __exit__(self, *_exc: object) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing releases the flock
            self._fd = None
