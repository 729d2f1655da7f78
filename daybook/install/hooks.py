"""Local hooks: the executable `<hooks_dir>/<service>` a host runs after its `current` link
moved. Hooks are only ever files on the host; nothing that arrives from the registry, the
store or an event names a command to run."""

from __future__ import annotations

import logging
import os
import stat
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

from daybook.model.results import HookResult
from daybook.model.rules import clip_text

log = logging.getLogger(__name__)

# The tail of a hook's output a result carries (it travels in reports).
OUTPUT_TAIL_CHARS = 4000
# After a kill, how long to wait for the hook's output pipe to close.
_REAP_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class HookRun:
    """One run of a service's hook: `current` (the link) now points at `version`."""

    service: str
    version: str
    previous: str | None
    install_path: Path
    current_link: Path

    def environment(self) -> dict[str, str]:
        return {
            **os.environ,
            "DAYBOOK_SERVICE": self.service,
            "DAYBOOK_VERSION": self.version,
            "DAYBOOK_PREVIOUS_VERSION": self.previous or "",
            "DAYBOOK_INSTALL_PATH": str(self.install_path),
            "DAYBOOK_CURRENT": str(self.current_link),
        }


class HookRunner:
    """Runs services' hooks from one directory, each within a time limit."""

    def __init__(self, hooks_dir: Path, *, timeout_s: float) -> None:
        self.hooks_dir = hooks_dir
        self._timeout_s = timeout_s

    def hook_for(self, service: str) -> Path | None:
        """The service's hook if there is one: a file that is executable."""
        path = self.hooks_dir / service
        if path.is_file() and os.access(path, os.X_OK):
            return path
        return None

    def run(self, run: HookRun) -> HookResult | None:
        """Run the service's hook, None when it has none."""
        path = self.hook_for(run.service)
        if path is None:
            return None
        unsafe = unsafe_reason(path) or unsafe_reason(self.hooks_dir)
        if unsafe is not None:
            log.warning("refusing the hook %s: %s", path, unsafe)
            return HookResult(ok=False, output=clip_text(f"refused to run {path}: {unsafe}"))
        return self._execute(path, run)

    def _execute(self, path: Path, run: HookRun) -> HookResult:
        # Imported here: most pulls run no hook, and these cost a pull's start 2 ms.
        import signal
        import subprocess

        try:
            # A session of its own: a timeout kills the hook and everything it started.
            child = subprocess.Popen(
                [str(path)],
                cwd=run.install_path,
                env=run.environment(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as exc:
            return HookResult(ok=False, output=clip_text(f"cannot run {path}: {exc.strerror}"))
        try:
            output, _ = child.communicate(timeout=self._timeout_s)
        except subprocess.TimeoutExpired:
            with suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGKILL)
            try:
                output, _ = child.communicate(timeout=_REAP_TIMEOUT_S)
            except subprocess.TimeoutExpired:  # something it started left the group
                child.kill()
                output = b""
                child.wait()
            note = f"\n[daybook: killed after {self._timeout_s:g} s, the hook's time limit]"
            log.warning("the hook %s ran past %g s and was killed", path, self._timeout_s)
            return HookResult(ok=False, exit=None, output=output_tail(output, note))
        log.info("the hook %s for %s exited %d", path, run.version, child.returncode)
        return HookResult(
            ok=child.returncode == 0, exit=child.returncode, output=output_tail(output)
        )


def unsafe_reason(path: Path) -> str | None:
    """Why `path` may not be trusted as (the directory of) a hook, None when it may.

    A hook runs with the daemon's rights, root on most hosts: whoever can change the file
    or its directory could run anything as root. So it must belong to root or to the user
    running Daybook, and be writable by no group and no other user.
    """
    try:
        info = path.stat()
    except OSError as exc:
        return f"cannot read it: {exc.strerror}"
    if info.st_uid not in (0, os.geteuid()):
        return f"it belongs to uid {info.st_uid}, neither root nor the user running daybook"
    mode = stat.S_IMODE(info.st_mode)
    if mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"it is writable by its group or by every user (mode {mode:o})"
    return None


def output_tail(output: bytes, note: str = "") -> str:
    """The end of what a hook printed, with `note` after it, within the result's limit."""
    text = output.decode("utf-8", errors="replace")
    room = OUTPUT_TAIL_CHARS - len(note)
    if len(text) > room:
        text = "..." + text[len(text) - room + 3 :]
    return text + note
