"""File-system failures under the install dir, told in one line that names the cause."""

from __future__ import annotations

import errno
from pathlib import Path


def describe_os_error(exc: OSError, install_dir: Path) -> str:
    """One line for a file-system failure, naming the disk when it is full."""
    if exc.errno == errno.ENOSPC:
        return f"no space left on the device holding {install_dir}"
    if exc.errno == errno.EDQUOT:
        return f"disk quota exceeded on {install_dir}"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return f"permission denied writing under {install_dir}"
    return f"{exc.strerror or exc} ({exc.filename or install_dir})"
