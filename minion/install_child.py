"""Installing in a child process: a minion process runs each sync that has something to
download in a short-lived `python -m minion.install_child`, so it never loads the S3 client.

boto3/botocore, an S3 client and the inflate libraries cost a process about 25 MiB that
Python never hands back, and a minion spends nearly all its life idle between deploys: the
child holds that memory only while it installs. A fresh interpreter rather than `os.fork`:
the minion runs libzmq's threads and Python threads of its own, and a forked child could
inherit a lock (a module's import lock, a stream's) held by a thread that does not exist in
it. The interpreter's start costs about 50 ms of CPU per sync that downloads; a no-op sync
starts no child. Minions that share one process (a load test's thousand) install
in-process instead, through one shared store client; so does a minion whose S3 downloads
go through the URLs its master signs (minion/downloads.py): with no S3 client to keep out,
it has nothing to gain from a child.

Parent to child, on stdin: one JSON line, the job; then `stop` lines, asking the child to
give up retrying because the minion is stopping. End of file means the minion is gone: the
child exits at once and leaves its staging tree to the next install, as a killed minion
would (the install lock and the staging names make that safe). Child to parent, on stdout:
one JSON document, the per-service results or the error that stopped the sync. Both are
the JSON encodings `daybook.wire` derives from the types below, checked on the way in like
any message off the network. The child's log lines go to the minion's stderr.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Mapping, Sequence
from contextlib import suppress
from pathlib import Path
from typing import IO, TYPE_CHECKING

from daybook import wire
from daybook.cmalloc import find_mallopt, keep_freed_blocks
from daybook.errors import DaybookError, WireError
from daybook.install.installer import Installer, Selections
from daybook.logs import configure_logging
from daybook.model.names import is_valid_service
from daybook.model.releases import Selection
from daybook.model.results import ServiceResults
from daybook.model.rules import checked, record
from daybook.stopping import StopFlag, stop_on_signals
from daybook.store.base import open_store

if TYPE_CHECKING:
    import subprocess

log = logging.getLogger(__name__)

STOP_LINE = b"stop\n"
# The child's exit status when its minion went away in the middle of an install.
EXIT_ORPHANED = 3


class InstallChildError(DaybookError):
    """The install child failed as a whole; its message is the error the sync reports."""


@record
class InstallJob:
    """What one child installs, and how."""

    store_url: str
    install_dir: str
    services: tuple[str, ...] = checked(is_valid_service)
    max_parallel: int
    lock_timeout_s: float
    log_level: int
    # Which versions of each service to fetch, where the release lifecycle chooses; the
    # lifecycle's own step (link, hook, retention) runs in the minion after the child.
    selections: Mapping[str, Selection] = checked(key=is_valid_service, default_factory=dict)


@record
class InstallAnswer:
    """What the child did: the per-service results, or the error that stopped the sync."""

    services: ServiceResults = checked(key=is_valid_service, default_factory=dict)
    error: str | None = None


# -- the minion's side ----------------------------------------------------------------------


class ChildInstaller:
    """`Installer.sync` for a minion process, run in a child process; one child at a time.

    `stop` and `kill` may be called from any thread (`stop` from a signal handler, through
    the minion's stop flag) while `sync` runs on the sync thread.
    """

    def __init__(
        self,
        store_url: str,
        install_dir: Path,
        *,
        max_parallel: int,
        lock_timeout_s: float = 600.0,
        argv: Sequence[str] = (sys.executable, "-m", "minion.install_child"),
    ) -> None:
        self._store_url = store_url
        self._install_dir = install_dir.absolute()
        self._max_parallel = max_parallel
        self._lock_timeout_s = lock_timeout_s
        self._argv = list(argv)
        # Reentrant: `stop` may run in a signal handler on a thread that holds it.
        self._lock = threading.RLock()
        self._child: subprocess.Popen[bytes] | None = None
        self._stopping = False
        self._killed = False
        self.children_started = 0

    def sync(self, services: Sequence[str], selections: Selections | None = None) -> ServiceResults:
        # Loaded with the first download, like the rest of the install path.
        import subprocess

        from minion.sync import Cancelled

        job = InstallJob(
            store_url=self._store_url,
            install_dir=str(self._install_dir),
            services=tuple(services),
            max_parallel=self._max_parallel,
            lock_timeout_s=self._lock_timeout_s,
            log_level=logging.getLogger().getEffectiveLevel(),
            selections=dict(selections or {}),
        )
        with self._lock:
            if self._killed:
                raise Cancelled
            try:
                child = subprocess.Popen(
                    self._argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, close_fds=True
                )
            except OSError as exc:
                raise InstallChildError(f"cannot start the install process: {exc}") from exc
            self._child = child
            self.children_started += 1
            _tell(child, wire.to_json(job) + b"\n" + (STOP_LINE if self._stopping else b""))
        # Both are pipes, as asked of Popen.
        assert child.stdout is not None
        assert child.stdin is not None
        try:
            output = child.stdout.read()
            returncode = child.wait()
        finally:
            with self._lock:
                self._child = None
                killed = self._killed
            # Only now: the end of its stdin tells a child that is still running to quit.
            for stream in (child.stdin, child.stdout):
                with suppress(OSError):
                    stream.close()
        if returncode != 0 and killed:
            raise Cancelled
        return _outcome(output, returncode)

    def stop(self) -> None:
        """Ask the running child, and any started later, to give up retrying downloads; the
        extraction in progress finishes, as it would in the minion itself."""
        with self._lock:
            self._stopping = True
            if self._child is not None:
                _tell(self._child, STOP_LINE)

    def kill(self) -> None:
        """End the running child now and start no other (the minion's drain time is over);
        its staging tree is removed by the next install."""
        with self._lock:
            self._killed = True
            if self._child is not None:
                # Popen polls first, so a child already reaped is never signalled by pid.
                self._child.kill()


def _tell(child: subprocess.Popen[bytes], data: bytes) -> None:
    if child.stdin is None:
        return
    try:
        child.stdin.write(data)
        child.stdin.flush()
    except (OSError, ValueError):
        pass  # it has exited, or is exiting: its exit status says why


def _outcome(output: bytes, returncode: int) -> ServiceResults:
    """The child's answer; an error the sync reports if it died or answered nothing usable."""
    if returncode < 0:
        import signal

        name = signal.Signals(-returncode).name
        raise InstallChildError(f"the install process was killed by {name}")
    try:
        answer = wire.from_json(InstallAnswer, output)
    except WireError:
        raise InstallChildError(
            f"the install process gave no usable answer (exit status {returncode})"
        ) from None
    if answer.error is not None:
        raise InstallChildError(answer.error)
    return answer.services


# -- the child's side -----------------------------------------------------------------------


def install(job: InstallJob, stop: StopFlag) -> InstallAnswer:
    """Run the job's sync: the answer for the minion."""
    # Lazy, as in the minion itself: an unusable store fails each service's listing, and the
    # report says so per service, exactly as an in-process install would.
    store = open_store(job.store_url, lazy=True)
    installer = Installer(
        store,
        Path(job.install_dir),
        max_parallel=job.max_parallel,
        lock_timeout_s=job.lock_timeout_s,
        pause=lambda seconds: not stop.wait(seconds),
    )
    try:
        results = installer.sync(job.services, job.selections)
    except DaybookError as exc:  # the install lock, ...
        return InstallAnswer(error=str(exc))
    except Exception as exc:  # a bug: the minion reports it as the sync's error
        log.exception("the install failed")
        return InstallAnswer(error=f"internal error: {type(exc).__name__}: {exc}")
    finally:
        store.close()
    return InstallAnswer(results)


def follow_minion(commands: IO[bytes], stop: StopFlag) -> None:
    """Read the minion's `stop` lines; at end of file the minion is gone, and so is this."""
    for line in commands:
        if line == STOP_LINE:
            stop.set()
    log.warning("the minion is gone; abandoning the install")
    os._exit(EXIT_ORPHANED)


def main() -> int:
    # Unbuffered, on a descriptor of its own: the follower thread is still blocked reading
    # it when the interpreter exits, which must not wait for a buffered stream's lock.
    commands = os.fdopen(os.dup(sys.stdin.fileno()), "rb", buffering=0)
    job = wire.from_json(InstallJob, commands.readline())
    # The answer gets stdout to itself: anything a library prints goes to the log instead.
    answer = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    configure_logging(job.log_level)
    # This process ends with the job: its heap may keep the extractor's freed buffers.
    keep_freed_blocks(os.environ, find_mallopt())
    stop = StopFlag()
    # SIGTERM to the whole service (systemd) or Ctrl-C stops retries, like the minion's stop;
    # the minion decides when to give up on the extraction in progress.
    stop_on_signals(stop)
    threading.Thread(target=follow_minion, args=(commands, stop), daemon=True).start()
    with answer:
        answer.write(wire.to_json(install(job, stop)))
    return 0


if __name__ == "__main__":
    status = main()
    # Nothing is left to clean up (the answer is written, the log lines are flushed as they
    # are emitted), and tearing down botocore's hundreds of modules costs CPU for nothing.
    sys.stderr.flush()
    os._exit(status)
