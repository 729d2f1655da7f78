"""The installer: atomic versions, skipping what is present, per-version failures, the lock."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
from archives import make_asset

from daybook.errors import LockError
from daybook.installer import STAGING_PREFIX, Installer, InstallLock
from daybook.local_store import LocalStore
from daybook.naming import AssetRef
from daybook.store import AssetStream


def push(store: LocalStore, path: Path, ref: AssetRef) -> None:
    store.upload(path, ref, sha256=hashlib.sha256(path.read_bytes()).hexdigest())


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    store = LocalStore(tmp_path / "store")
    build = tmp_path / "build"
    build.mkdir()
    for service, version in [("api", "1.0"), ("api", "1.1"), ("web", "3")]:
        push(store, make_asset(build, service, version), AssetRef(service, version))
    return store


def test_installs_every_version_then_skips_them(store: LocalStore, tmp_path: Path) -> None:
    install_dir = tmp_path / "install"
    installer = Installer(store, install_dir)
    outcome = installer.sync(["api", "web", "absent"])
    assert outcome.ok
    assert outcome.services["api"].installed == ("1.0", "1.1")
    assert outcome.services["web"].installed == ("3",)
    assert outcome.services["absent"].installed == ()
    assert (install_dir / "api" / "1.1" / "bin" / "run").read_bytes().startswith(b"#!/bin/sh")
    assert os.access(install_dir / "api" / "1.1" / "bin" / "run", os.X_OK)

    again = installer.sync(["api", "web"])
    assert again.services["api"].installed == ()
    assert again.services["api"].present == ("1.0", "1.1")


def test_dry_run_writes_nothing(store: LocalStore, tmp_path: Path) -> None:
    install_dir = tmp_path / "install"
    outcome = Installer(store, install_dir).sync(["api"], dry_run=True)
    assert outcome.services["api"].installed == ("1.0", "1.1")
    assert not install_dir.exists()


def test_one_bad_version_does_not_stop_the_others(store: LocalStore, tmp_path: Path) -> None:
    # Tamper with one stored archive so its SHA-256 no longer matches.
    stored = next((tmp_path / "store").glob("api-1.0.tar.gz"))
    stored.write_bytes(stored.read_bytes()[:-20] + b"\0" * 20)
    install_dir = tmp_path / "install"
    outcome = Installer(store, install_dir).sync(["api", "web"])
    assert not outcome.ok
    assert set(outcome.services["api"].failed) == {"1.0"}
    assert outcome.services["api"].installed == ("1.1",)
    assert outcome.services["web"].installed == ("3",)
    assert not (install_dir / "api" / "1.0").exists()
    assert [p.name for p in (install_dir / "api").iterdir()] == ["1.1"]


class _FailingStream:
    """A stream that dies half-way, as a killed connection would."""

    def __init__(self, inner: AssetStream) -> None:
        self._inner = inner
        self.size = inner.size
        self.sha256 = inner.sha256
        self._served = 0

    def read(self, size: int = -1, /) -> bytes:
        if self._served > self.size // 2:
            raise OSError("connection reset")
        chunk = self._inner.read(min(size, 64) if size > 0 else 64)
        self._served += len(chunk)
        return chunk

    def close(self) -> None:
        self._inner.close()


def test_a_broken_download_leaves_no_partial_version(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    build = tmp_path / "build"
    build.mkdir()
    big = {f"data/{i}.bin": os.urandom(4096) for i in range(20)}
    push(store, make_asset(build, "api", "9", big), AssetRef("api", "9"))
    install_dir = tmp_path / "install"
    installer = Installer(store, install_dir, wrap_stream=lambda _ref, s: _FailingStream(s))
    outcome = installer.sync(["api"])
    assert "connection reset" in outcome.services["api"].failed["9"]
    assert list((install_dir / "api").iterdir()) == []


def test_stale_staging_from_a_dead_process_is_removed(store: LocalStore, tmp_path: Path) -> None:
    install_dir = tmp_path / "install"
    stale = install_dir / "api" / f"{STAGING_PREFIX}1.0-deadbeef"
    stale.mkdir(parents=True)
    (stale / "half-written").write_bytes(b"x")
    outcome = Installer(store, install_dir).sync(["api"])
    assert outcome.services["api"].installed == ("1.0", "1.1")
    assert sorted(p.name for p in (install_dir / "api").iterdir()) == ["1.0", "1.1"]


def test_lock_excludes_a_second_process(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from pathlib import Path\n"
            "from daybook.installer import InstallLock\n"
            "with InstallLock(Path(sys.argv[1])):\n"
            "    print('locked', flush=True)\n"
            "    sys.stdin.read()\n",
            str(tmp_path),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "locked"
        with (
            pytest.raises(LockError, match="another daybook process"),
            InstallLock(tmp_path, timeout_s=0.2),
        ):
            pass
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=10)
        assert holder.stdout is not None
        holder.stdout.close()
    # Once the holder is gone the lock is free again.
    with InstallLock(tmp_path, timeout_s=1):
        pass


def test_a_killed_holder_does_not_leave_a_stale_lock(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from pathlib import Path\n"
            "from daybook.installer import InstallLock\n"
            "with InstallLock(Path(sys.argv[1])):\n"
            "    print('locked', flush=True)\n"
            "    time.sleep(60)\n",
            str(tmp_path),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None
    assert holder.stdout.readline().strip() == "locked"
    holder.kill()
    holder.wait(timeout=10)
    holder.stdout.close()
    with InstallLock(tmp_path, timeout_s=2):
        pass
