"""Removes installed and staged version trees, whatever modes their archives gave them."""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

# What the owner needs on a directory to empty it: list it, reach into it, unlink from it.
_OWNER_RWX = stat.S_IRWXU


def remove_tree(path: Path) -> None:
    """Delete the tree at `path`; raise OSError naming what could not be deleted.

    An archive may hold directories of mode 0555 or 0000, which the extractor applies at
    the end: a process without root's override cannot empty them. On a permission error,
    every directory of the tree gets its owner's rwx back and the removal is tried again.
    Symlinks are never followed, so nothing outside the tree changes mode.
    """
    try:
        shutil.rmtree(path, onerror=_raise_with_full_path)
    except PermissionError:
        open_up_tree(path)
        shutil.rmtree(path, onerror=_raise_with_full_path)


def _raise_with_full_path(
    _function: Callable[..., object],
    path: str,
    exc_info: tuple[type[BaseException], BaseException, TracebackType],
) -> None:
    # rmtree works relative to open directories: its own errors name a file by its last
    # component alone, which tells no one which tree it was in.
    exc = exc_info[1]
    if isinstance(exc, OSError) and exc.errno is not None:
        raise OSError(exc.errno, exc.strerror, path) from exc
    raise exc


def open_up_tree(path: Path) -> None:
    """Give every directory of the tree at `path`, itself included, its owner's rwx."""
    parent_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        _open_up(parent_fd, path.name)
    finally:
        os.close(parent_fd)


def _open_up(parent_fd: int, name: str) -> None:
    # Every step is relative to an open directory and refuses a symlink, so a link in the
    # tree (or one swapped in) never leads the chmod outside it.
    info = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
    if not stat.S_ISDIR(info.st_mode):
        return
    if info.st_mode & _OWNER_RWX != _OWNER_RWX:
        mode = stat.S_IMODE(info.st_mode) | _OWNER_RWX
        os.chmod(name, mode, dir_fd=parent_fd, follow_symlinks=False)
    fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=parent_fd)
    try:
        with os.scandir(fd) as entries:
            children = [entry.name for entry in entries if entry.is_dir(follow_symlinks=False)]
        for child in children:
            _open_up(fd, child)
    finally:
        os.close(fd)
