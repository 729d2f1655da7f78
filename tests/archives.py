"""Builds small, real asset tarballs for tests."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path


def make_asset(
    directory: Path, service: str, version: str, files: dict[str, bytes] | None = None
) -> Path:
    """Write `SERVICE-VERSION.tar.gz` holding `files` (default: a script and a config file)."""
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
    return path
