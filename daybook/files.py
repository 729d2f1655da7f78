"""Atomic file writes: a new file is written beside its final name and put in place whole,
so a reader sees the old file or the new one, never half of one."""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# Tries at a fresh temp name before giving up, as tempfile does.
_TEMP_NAME_TRIES = 100


def write_atomically(
    path: Path,
    data: bytes,
    *,
    mode: int | None = 0o600,
    durable: bool = True,
    fsync_dir: bool = False,
    overwrite: bool = True,
    prefix: str | None = None,
) -> None:
    """Put `data` at `path` atomically; see `open_atomically` for the options."""
    with open_atomically(
        path, mode=mode, durable=durable, fsync_dir=fsync_dir, overwrite=overwrite, prefix=prefix
    ) as file:
        file.write(data)


@contextmanager
def open_atomically(
    path: Path,
    *,
    mode: int | None = 0o600,
    durable: bool = True,
    fsync_dir: bool = False,
    overwrite: bool = True,
    prefix: str | None = None,
) -> Iterator[io.BufferedWriter]:
    """A new file to write, put at `path` when the block ends; removed if it raises.

    `mode` is the file's exact mode, set before a byte is written (so a secret is never
    readable by others, whatever the umask); None leaves it as `open()` would create it,
    0o666 less the umask. `durable` fsyncs the data before the file is put in place, and
    `fsync_dir` the directory after, so that the new name itself survives a crash.
    `overwrite=False` publishes with a hard link, which raises FileExistsError if `path`
    exists: of two writers racing, the first wins. The temp file is `prefix` (by default
    `.NAME.`) and random characters, in the same directory, so the rename stays on one
    file system.
    """
    directory = path.parent
    fd, temp = _create_temp(directory, f".{path.name}." if prefix is None else prefix, mode)
    try:
        with os.fdopen(fd, "wb") as file:
            yield file
            file.flush()
            if durable:
                os.fsync(file.fileno())
        if overwrite:
            os.replace(temp, path)
        else:
            os.link(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    if not overwrite:
        temp.unlink()
    if fsync_dir:
        fsync_directory(directory)


def fsync_directory(directory: Path) -> None:
    """Make a rename in `directory` durable: the new entry survives a crash."""
    if os.name != "posix":
        return  # directories cannot be opened for fsync elsewhere
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# What tells a file changed without reading it: its inode (an atomic write is a rename of a
# new file), its modification time and its size.
FileSignature = tuple[int, int, int]


def file_signature(path: Path) -> FileSignature | None:
    """The file's signature, None when it does not exist."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def unique_suffix() -> str:
    """Twelve random hex characters, to make a name beside others that no one else picks."""
    return os.urandom(6).hex()


def _create_temp(directory: Path, prefix: str, mode: int | None) -> tuple[int, Path]:
    # Not tempfile.mkstemp: it always creates 0600, and `mode=None` needs the kernel to
    # apply the umask as open() does. O_EXCL refuses an existing name, a symlink included.
    for _ in range(_TEMP_NAME_TRIES):
        temp = directory / f"{prefix}{unique_suffix()}"
        try:
            fd = os.open(
                temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666 if mode is None else 0o600
            )
        except FileExistsError:
            continue
        if mode is not None:
            try:
                os.fchmod(fd, mode)
            except BaseException:
                os.close(fd)
                temp.unlink(missing_ok=True)
                raise
        return fd, temp
    raise FileExistsError(f"no free temp file name for {prefix}* in {directory}")
