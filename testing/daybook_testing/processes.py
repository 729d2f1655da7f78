"""One child process with its output in a log file, and stopping several at once."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import IO

STOP_TIMEOUT_S = 15.0


class Proc:
    """A started process, its stdout and stderr in `log_path`."""

    def __init__(
        self, name: str, argv: Sequence[str], env: Mapping[str, str], log_path: Path
    ) -> None:
        self.name = name
        self.log_path = log_path
        self._log: IO[bytes] = log_path.open("wb")
        self.popen = subprocess.Popen(
            list(argv), env=dict(env), stdout=self._log, stderr=subprocess.STDOUT
        )
        self.paused = False

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def tail(self, lines: int = 60) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            self.popen.send_signal(sig)

    def kill(self) -> None:
        """SIGKILL, and reap it: nothing it had in flight is cleaned up."""
        self.signal(signal.SIGKILL)
        self.popen.wait(STOP_TIMEOUT_S)
        self.close_log()
        self.paused = False

    def pause(self) -> None:
        self.signal(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        self.signal(signal.SIGCONT)
        self.paused = False

    def terminate(self) -> None:
        """Ask it to stop: SIGTERM, after SIGCONT if it is paused."""
        if self.paused:
            self.resume()
        self.signal(signal.SIGTERM)

    def wait(self, timeout_s: float = STOP_TIMEOUT_S) -> int | None:
        """Its exit code; it is killed, and None returned, if it does not exit in time."""
        try:
            return self.popen.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()
            return None
        finally:
            self.close_log()

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> int | None:
        self.terminate()
        return self.wait(timeout_s)

    def close_log(self) -> None:
        self._log.close()

    def rss_bytes(self) -> int:
        """Resident memory, from /proc."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError(f"no VmRSS for {self.name} (pid {self.pid})")


def stop_together(processes: Iterable[Proc], timeout_s: float = STOP_TIMEOUT_S) -> list[str]:
    """SIGTERM every one still running, then wait for all within one deadline, killing
    those that outlast it; return what went wrong (an exit other than 0), for a report."""
    running = [process for process in processes if process.alive()]
    for process in running:
        process.terminate()
    deadline = time.monotonic() + timeout_s
    failures = []
    for process in running:
        code = process.wait(max(0.1, deadline - time.monotonic()))
        if code != 0:
            failures.append(f"{process.name} exited {code}:\n{process.tail()}")
    return failures
