"""Builds small, real asset tarballs for tests."""

from __future__ import annotations

import io
import tarfile
from collections.abc import Mapping
from pathlib import Path

# Directories as some archives hold them, which only root could empty without opening
# them up first: a read-only one, holding a closed one (the extractor applies both).
LOCKED_DIRS = {"share": 0o555, "share/sealed": 0o000}


def make_asset(
    directory: Path,
    service: str,
    version: str,
    files: dict[str, bytes] | None = None,
    *,
    dir_modes: Mapping[str, int] | None = None,
) -> Path:
    """Write `SERVICE-VERSION.tar.gz` holding `files` (default: a script and a config file),
    and directories of the given modes (listed after the files, as tar lists them last)."""
    files = (
        files
        if files is not None
        else {
            "bin/run": f"#!/bin/sh\necho {service} {version}\n".encode(),
            "conf/app.toml": f'version = "{version}"\n'.encode(),
        }
    )
    path = directory / f"{service}-{version}.tar.gz"
    with tarfile.open(path, "w:gz") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o755 if name.startswith("bin/") else 0o644
            archive.addfile(info, io.BytesIO(data))
        for name, mode in (dir_modes or {}).items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.DIRTYPE
            info.mode = mode
            archive.addfile(info)
    return path


def make_locked_asset(directory: Path, service: str, version: str) -> Path:
    """An asset whose directories (LOCKED_DIRS) only root could empty as they are."""
    files = {
        "bin/run": f"#!/bin/sh\necho {service} {version}\n".encode(),
        "share/sealed/data": b"kept from everyone\n",
    }
    return make_asset(directory, service, version, files, dir_modes=LOCKED_DIRS)
