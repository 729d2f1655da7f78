"""The installer: atomic versions, skipping what is present, per-version failures, the lock."""

from __future__ import annotations

import errno
import hashlib
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
from archives import make_asset, make_locked_asset
from unprivileged import run_unprivileged

from daybook.errors import LockError, LockHeldError, StoreUnavailableError
from daybook.install.installer import (
    DOWNLOAD_ATTEMPTS,
    RETRY_FIRST_DELAY_S,
    RETRY_MAX_DELAY_S,
    STAGING_PREFIX,
    Installer,
    InstallLock,
    retry_delay_s,
)
from daybook.install.lock import LOCK_NAME, PidLock
from daybook.model.names import AssetRef
from daybook.model.results import all_ok
from daybook.store.base import AssetStream
from daybook.store.local import LocalStore


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
    assert all_ok(outcome)
    assert outcome["api"].installed == ("1.0", "1.1")
    assert outcome["web"].installed == ("3",)
    assert outcome["absent"].installed == ()
    assert (install_dir / "api" / "1.1" / "bin" / "run").read_bytes().startswith(b"#!/bin/sh")
    assert os.access(install_dir / "api" / "1.1" / "bin" / "run", os.X_OK)

    again = installer.sync(["api", "web"])
    assert again["api"].installed == ()
    assert again["api"].present == ("1.0", "1.1")


def test_dry_run_writes_nothing(store: LocalStore, tmp_path: Path) -> None:
    install_dir = tmp_path / "install"
    outcome = Installer(store, install_dir).sync(["api"], dry_run=True)
    assert outcome["api"].installed == ("1.0", "1.1")
    assert not install_dir.exists()


def test_one_bad_version_does_not_stop_the_others(store: LocalStore, tmp_path: Path) -> None:
    # Tamper with one stored archive so its SHA-256 no longer matches.
    stored = next((tmp_path / "store").glob("api-1.0.tar.gz"))
    stored.write_bytes(stored.read_bytes()[:-20] + b"\0" * 20)
    install_dir = tmp_path / "install"
    outcome = Installer(store, install_dir).sync(["api", "web"])
    assert not all_ok(outcome)
    assert set(outcome["api"].failed) == {"1.0"}
    assert outcome["api"].installed == ("1.1",)
    assert outcome["web"].installed == ("3",)
    assert not (install_dir / "api" / "1.0").exists()
    assert [p.name for p in (install_dir / "api").iterdir()] == ["1.1"]


def test_a_file_in_place_of_a_service_dir_fails_that_service_only(
    store: LocalStore, tmp_path: Path
) -> None:
    install_dir = tmp_path / "install"
    install_dir.mkdir()
    (install_dir / "api").write_text("not a directory\n")
    installer = Installer(store, install_dir)
    for dry_run in (True, False):
        outcome = installer.sync(["api", "web"], dry_run=dry_run)
        assert outcome["api"].error is not None
        assert f"{install_dir / 'api'} is not a directory" in outcome["api"].error
        assert outcome["web"].installed == ("3",)
    assert (install_dir / "web" / "3").is_dir()
    # What a minion reports as installed: nothing there, rather than a crash.
    assert installer.installed(["api", "web"]) == {"api": [], "web": ["3"]}


def test_a_rejected_archive_with_read_only_directories_leaves_nothing_without_root(
    tmp_path: Path,
) -> None:
    store = LocalStore(tmp_path / "store")
    build = tmp_path / "build"
    build.mkdir()
    # Recorded with another SHA-256: the archive is extracted whole, modes applied, then
    # rejected, and its staging tree must go although only root could empty it as it is.
    store.upload(make_locked_asset(build, "api", "1"), AssetRef("api", "1"), sha256="0" * 64)
    child = run_unprivileged(
        "import sys\n"
        "from pathlib import Path\n"
        "from daybook.install.installer import Installer\n"
        "from daybook.store.local import LocalStore\n"
        "installer = Installer(LocalStore(Path(sys.argv[1])), Path(sys.argv[2]))\n"
        "for _ in range(2):\n"
        "    print(installer.sync(['api'])['api'].failed['1'])\n",
        str(tmp_path / "store"),
        str(tmp_path / "install"),
    )
    assert child.returncode == 0, child.stderr
    assert child.stdout.count("SHA-256 mismatch") == 2
    assert os.listdir(tmp_path / "install" / "api") == []  # no .partial-* tree, per try


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
    assert "connection reset" in outcome["api"].failed["9"]
    assert list((install_dir / "api").iterdir()) == []


def test_stale_staging_from_a_dead_process_is_removed(store: LocalStore, tmp_path: Path) -> None:
    install_dir = tmp_path / "install"
    stale = install_dir / "api" / f"{STAGING_PREFIX}1.0-deadbeef"
    stale.mkdir(parents=True)
    (stale / "half-written").write_bytes(b"x")
    outcome = Installer(store, install_dir).sync(["api"])
    assert outcome["api"].installed == ("1.0", "1.1")
    assert sorted(p.name for p in (install_dir / "api").iterdir()) == ["1.0", "1.1"]


def test_lock_excludes_a_second_process(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from pathlib import Path\n"
            "from daybook.install.lock import InstallLock\n"
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
            "from daybook.install.lock import InstallLock\n"
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


def test_a_held_lock_is_refused_at_once_naming_its_holder(tmp_path: Path) -> None:
    path = tmp_path / "data" / "master.lock"
    with PidLock(path, timeout_s=0):
        started = time.monotonic()
        with pytest.raises(LockHeldError) as held, PidLock(path, timeout_s=0):
            pass
        assert time.monotonic() - started < 1.0  # no wait with a timeout of 0
        assert held.value.holder_pid == os.getpid()
        assert path.read_text() == f"{os.getpid()}\n"
    with PidLock(path, timeout_s=0):  # released with its holder
        pass


class _BrokenOffStream:
    """A store stream that breaks off at its first read, as S3 going away mid-download."""

    def __init__(self, inner: AssetStream) -> None:
        self._inner = inner
        self.size = inner.size
        self.sha256 = inner.sha256

    def read(self, size: int = -1, /) -> bytes:
        raise StoreUnavailableError("reading s3://bucket/api-9.tar.gz failed: connection reset")

    def close(self) -> None:
        self._inner.close()


def _store_with_one_asset(tmp_path: Path) -> LocalStore:
    store = LocalStore(tmp_path / "store")
    build = tmp_path / "build"
    build.mkdir()
    push(store, make_asset(build, "api", "9"), AssetRef("api", "9"))
    return store


def test_a_download_the_store_breaks_off_is_retried_after_a_growing_pause(
    tmp_path: Path,
) -> None:
    breaks = [True, True, False]
    pauses: list[float] = []

    def flaky(_ref: AssetRef, stream: AssetStream) -> AssetStream:
        return _BrokenOffStream(stream) if breaks.pop(0) else stream

    installer = Installer(
        _store_with_one_asset(tmp_path),
        tmp_path / "install",
        wrap_stream=flaky,
        pause=lambda seconds: pauses.append(seconds) is None,
    )
    outcome = installer.sync(["api"])
    assert all_ok(outcome)
    assert outcome["api"].installed == ("9",)
    assert len(pauses) == 2
    assert RETRY_FIRST_DELAY_S / 2 <= pauses[0] <= RETRY_FIRST_DELAY_S
    assert RETRY_FIRST_DELAY_S <= pauses[1] <= 2 * RETRY_FIRST_DELAY_S
    assert sorted(p.name for p in (tmp_path / "install" / "api").iterdir()) == ["9"]


def test_retries_end_with_the_failure_reported(tmp_path: Path) -> None:
    pauses: list[float] = []
    installer = Installer(
        _store_with_one_asset(tmp_path),
        tmp_path / "install",
        wrap_stream=lambda _ref, stream: _BrokenOffStream(stream),
        pause=lambda seconds: pauses.append(seconds) is None,
    )
    outcome = installer.sync(["api"])
    assert "connection reset" in outcome["api"].failed["9"]
    assert len(pauses) == DOWNLOAD_ATTEMPTS - 1
    assert list((tmp_path / "install" / "api").iterdir()) == []


def test_a_stopping_minion_does_not_wait_out_the_retries(tmp_path: Path) -> None:
    calls: list[float] = []

    def stopping(seconds: float) -> bool:
        calls.append(seconds)
        return False

    installer = Installer(
        _store_with_one_asset(tmp_path),
        tmp_path / "install",
        wrap_stream=lambda _ref, stream: _BrokenOffStream(stream),
        pause=stopping,
    )
    assert "9" in installer.sync(["api"])["api"].failed
    assert len(calls) == 1


def test_an_archive_that_fails_its_checksum_is_not_retried(tmp_path: Path) -> None:
    store = _store_with_one_asset(tmp_path)
    stored = tmp_path / "store" / "api-9.tar.gz"
    stored.write_bytes(stored.read_bytes()[:-20] + b"\0" * 20)
    pauses: list[float] = []
    installer = Installer(
        store, tmp_path / "install", pause=lambda seconds: pauses.append(seconds) is None
    )
    assert "9" in installer.sync(["api"])["api"].failed
    assert pauses == []


def test_retry_delays_double_up_to_a_cap_with_jitter() -> None:
    rng = random.Random(7)
    first = [retry_delay_s(1, rng) for _ in range(50)]
    assert all(RETRY_FIRST_DELAY_S / 2 <= d <= RETRY_FIRST_DELAY_S for d in first)
    assert len(set(first)) > 1
    assert RETRY_FIRST_DELAY_S <= retry_delay_s(2, rng) <= 2 * RETRY_FIRST_DELAY_S
    assert retry_delay_s(1000, rng) <= RETRY_MAX_DELAY_S


def test_a_lock_whose_pid_cannot_be_written_still_locks_and_is_released(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def disk_full(_fd: int, _data: bytes) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as patched:
        patched.setattr("daybook.install.lock.os.write", disk_full)
        held = InstallLock(tmp_path, timeout_s=0.1)
        with held, pytest.raises(LockError), InstallLock(tmp_path, timeout_s=0.1):
            pass
    with InstallLock(tmp_path, timeout_s=0.1):  # released: no descriptor was left behind
        pass


@pytest.mark.parametrize("kind", ["file", "dangling symlink"])
def test_an_install_dir_that_is_not_a_directory_is_named_so(tmp_path: Path, kind: str) -> None:
    blocker = tmp_path / "not-a-dir"
    if kind == "file":
        blocker.write_bytes(b"")
    else:
        blocker.symlink_to(tmp_path / "gone")
    with (
        pytest.raises(LockError, match=f"{blocker} is not a directory"),
        InstallLock(blocker),
    ):
        pass


def test_a_lock_that_cannot_be_created_is_a_lock_error(tmp_path: Path) -> None:
    (tmp_path / LOCK_NAME).mkdir()  # a directory where the lock file goes
    with pytest.raises(LockError, match="cannot create the lock"), InstallLock(tmp_path):
        pass
