"""Which directories running processes use, read from /proc (Linux): a version dir that a
process runs from (its working directory or executable) or holds a file in is in use, and
retention leaves it in place."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

PROC = Path("/proc")


def paths_in_use(dirs: Sequence[Path], proc: Path = PROC) -> set[Path]:
    """The members of `dirs` that some process has its cwd, its exe or an open fd inside.

    Other users' processes that this one may not inspect are skipped: an unprivileged
    `daybook pull` sees its own user's processes, a root minion sees all.
    """
    roots = {str(d.resolve()): d for d in dirs}
    busy: set[Path] = set()
    for target in _process_links(proc):
        for root, given in roots.items():
            if target == root or target.startswith(root + "/"):
                busy.add(given)
        if len(busy) == len(roots):
            break
    return busy


def _process_links(proc: Path) -> Iterator[str]:
    """Every process's cwd, exe and open files' targets that can be read."""
    try:
        pids = [entry.path for entry in os.scandir(proc) if entry.name.isdigit()]
    except OSError:
        return
    for pid_dir in pids:
        for name in ("cwd", "exe"):
            target = _readlink(f"{pid_dir}/{name}")
            if target is not None:
                yield target
        try:
            fds = os.listdir(f"{pid_dir}/fd")
        except OSError:  # not ours to read, or it has exited meanwhile
            continue
        for fd in fds:
            target = _readlink(f"{pid_dir}/fd/{fd}")
            if target is not None:
                yield target


def _readlink(path: str) -> str | None:
    try:
        target = os.readlink(path)
    except OSError:
        return None
    # A deleted file or directory reads as "<path> (deleted)": still inside the version.
    return target.removesuffix(" (deleted)")
