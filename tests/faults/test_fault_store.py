"""The store and the disk failing: S3 (moto and SeaweedFS) stopped mid-download, a tampered
asset, a full disk."""

from __future__ import annotations

import errno
import functools
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import pytest
from archives import make_asset
from fault_fleet import Figures, FleetFactory, incompressible, many_files
from process_fleet import ProcessFleet, asset_sha256
from s3_server import client_for
from stoppable_s3 import StoppableS3, quiet_werkzeug
from stoppable_seaweed import StoppableSeaweed

from daybook.model.names import AssetRef
from daybook.store.base import Store
from daybook.store.local import LocalStore
from daybook.store.s3 import S3Store
from daybook_testing.waiting import wait_for

if TYPE_CHECKING:
    pass

pytestmark = pytest.mark.faults

MIB = 1024 * 1024
HOSTS = ("web-1", "web-2")


# -- S3 stopped during downloads ----------------------------------------------------------------


@pytest.fixture(params=["moto", "seaweed"])
def stoppable_s3(
    request: pytest.FixtureRequest, s3_env: str, tmp_path: Path
) -> Iterator[StoppableS3 | StoppableSeaweed]:
    """An S3 server of this test's own, that it may stop and start again: moto, or
    SeaweedFS (a real one, killed and restarted on its data); downloads trickle at 2 MiB/s."""
    if request.param == "seaweed":
        weed = StoppableSeaweed(tmp_path / "seaweedfs", rate_bytes_per_s=2 * MIB)
        weed.start()
        try:
            yield weed
        finally:
            weed.stop()
        return
    restore = quiet_werkzeug()
    server = StoppableS3(rate_bytes_per_s=2 * MIB)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        restore()


def test_s3_stopped_during_downloads_fails_clearly_then_converges(
    stoppable_s3: StoppableS3 | StoppableSeaweed, make_fleet: FleetFactory, figures: Figures
) -> None:
    client = client_for(stoppable_s3.endpoint)
    bucket = f"daybook-faults-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket)
    store = S3Store(bucket, client=client)
    # Two attempts per S3 request (AWS_MAX_ATTEMPTS is honoured): a dead endpoint in seconds.
    env = {"AWS_ENDPOINT_URL": stoppable_s3.endpoint, "AWS_MAX_ATTEMPTS": "2"}
    fleet = make_fleet(store=store, env=env, splay_s=0.0)
    fleet.push("web", "1")
    fleet.map("web-*", "web")
    fleet.start_master()
    for host in HOSTS:
        fleet.start_minion(host)
    fleet.wait_converged(HOSTS, {"web": ["1"]})

    # About 1.5 s per download at the server's rate.
    fleet.push("web", "2", {"blob": incompressible(3 * MIB)})
    wait_for(lambda: stoppable_s3.transfers_in_flight >= len(HOSTS), "both downloads running")
    port = stoppable_s3.port
    stoppable_s3.stop()
    stopped = time.monotonic()
    assert stoppable_s3.broken_transfers >= 1

    def failure_reported(host: str) -> bool:
        report = fleet.last_report(host)
        if report is None or report.ok:
            return False
        result = report.services["web"]
        return "2" in result.failed or result.error is not None

    for host in HOSTS:
        wait_for(functools.partial(failure_reported, host), f"{host} reporting the outage")
        figures[f"{host}_failure_reported_after_s"] = time.monotonic() - stopped
        # Nothing half-written shows (a retry may hold a staging tree: checked at the end).
        assert fleet.installed(host, "web") == ["1"]
        log = fleet.minions[host].log()
        assert "retrying in" in log, "a broken-off download is retried with backoff"
    report = fleet.last_report("web-1")
    assert report is not None
    reason = report.services["web"].failed.get("2") or report.services["web"].error or ""
    assert stoppable_s3.endpoint in reason, reason

    stoppable_s3.start()
    assert stoppable_s3.port == port
    restarted = time.monotonic()
    fleet.wait_converged(HOSTS, {"web": ["1", "2"]}, timeout_s=60)
    figures["recovery_s"] = time.monotonic() - restarted
    for host in HOSTS:
        blob = fleet.install_dir(host) / "web" / "2" / "blob"
        assert blob.read_bytes() == incompressible(3 * MIB)
        assert fleet.partials(host, "web") == [], "broken-off attempts leave nothing"
    master = fleet.master
    assert master is not None
    # Minions can converge before the master's next store poll notices the store is back.
    wait_for(lambda: "is readable again" in master.log(), "the master seeing the store back")
    master_log = master.log()
    assert master_log.count("cannot list the store") == 1, "the outage is logged once"
    assert master_log.count("is readable again") == 1


# -- a tampered asset ---------------------------------------------------------------------------


@pytest.fixture(params=["file", "s3", "seaweed"])
def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    if request.param == "file":
        return LocalStore(tmp_path / "store")
    # Minions reach the session's moto or SeaweedFS server through the environment.
    server = "s3" if request.param == "s3" else "seaweed"
    request.getfixturevalue(f"{server}_env")
    return S3Store(request.getfixturevalue(f"{server}_bucket"))


def _tamper(store: Store, ref: AssetRef, content: bytes) -> None:
    """Replace the asset's bytes behind the store's back, keeping the recorded checksum."""
    if isinstance(store, LocalStore):
        # In place: the same file (inode), so the checksum recorded for it still applies.
        with (store.root / ref.filename).open("r+b") as handle:
            handle.truncate(0)
            handle.write(content)
        return
    assert isinstance(store, S3Store)
    info = store.stat(ref)
    assert info is not None
    assert info.sha256 is not None
    # The env fixture of the store's S3 server (moto or SeaweedFS) named its endpoint.
    client = client_for(os.environ["AWS_ENDPOINT_URL"])
    try:
        client.put_object(
            Bucket=urlsplit(store.url).netloc,
            Key=store.key_for(ref),
            Body=content,
            Metadata={"sha256": info.sha256},
        )
    finally:
        client.close()


def test_a_tampered_asset_is_refused_reported_and_never_installed(
    any_store: Store,
    make_fleet: FleetFactory,
    figures: Figures,
    tmp_path: Path,
) -> None:
    fleet = make_fleet(store=any_store, splay_s=0.0)
    fleet.push("web", "1")
    fleet.map("web-*", "web")
    fleet.start_master()
    fleet.start_minion("web-1")
    fleet.wait_converged(["web-1"], {"web": ["1"]})

    good = fleet.push("web", "2")
    evil_dir = tmp_path / "evil"
    evil_dir.mkdir()
    evil = make_asset(evil_dir, "web", "2", {"bin/run": b"#!/bin/sh\necho owned\n"})
    _tamper(any_store, AssetRef("web", "2"), evil.read_bytes())

    def refused() -> str | None:
        report = fleet.last_report("web-1")
        return report.services["web"].failed.get("2") if report is not None else None

    reason = wait_for(refused, "the tampered version reported")
    assert "SHA-256 mismatch" in reason, reason
    first = fleet.last_report("web-1")
    assert first is not None
    # It is tried again on every republish, and refused every time.
    wait_for(
        lambda: (
            (r := fleet.last_report("web-1")) is not None
            and r.finished_at > first.finished_at
            and "2" in r.services["web"].failed
        ),
        "the tampered version refused again",
    )
    assert fleet.installed("web-1", "web") == ["1"]
    assert fleet.partials("web-1", "web") == []

    fixed = time.monotonic()
    any_store.upload(good, AssetRef("web", "2"), sha256=asset_sha256(good), overwrite=True)
    fleet.wait_converged(["web-1"], {"web": ["1", "2"]})
    figures["recovery_s"] = time.monotonic() - fixed
    run = fleet.install_dir("web-1") / "web" / "2" / "bin" / "run"
    assert run.read_bytes() == b"#!/bin/sh\necho web 2\n"


# -- a full disk --------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs, unmounted at teardown."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root (CI runs the suite as root)")
    mount_point = tmp_path / "small-disk"
    mount_point.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount_point)],
        check=True,
        capture_output=True,
        timeout=10,
    )
    try:
        yield mount_point
    finally:
        umount = ["umount", str(mount_point)]
        if subprocess.run(umount, check=False, capture_output=True, timeout=10).returncode:
            # Something still holds it: detach it anyway, it goes once released.
            subprocess.run([*umount, "-l"], check=False, capture_output=True, timeout=10)


def _fill(directory: Path) -> Path:
    """Write a file until the disk has not one page left; return it."""
    ballast = directory / "ballast"
    fd = os.open(ballast, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            try:
                os.write(fd, b"\0" * 4096)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                return ballast
    finally:
        os.close(fd)


def test_a_full_disk_fails_clearly_and_installs_once_space_is_freed(
    small_disk: Path, make_fleet: FleetFactory, figures: Figures
) -> None:
    fleet: ProcessFleet = make_fleet(splay_s=0.0)
    fleet.push("web", "1")
    fleet.map("web-*", "web")
    fleet.start_master()
    # Full before the minion ever ran: not even its lock file can hold a byte.
    ballast = _fill(small_disk)
    fleet.start_minion("web-1", install_dir=small_disk)
    expected = f"no space left on the device holding {small_disk}"

    for version, wanted in (("1", ["1"]), ("2", ["1", "2"])):
        if version == "2":
            ballast = _fill(small_disk)
            fleet.push("web", version, many_files(200, 4096))

        def failed(v: str = version) -> str | None:
            report = fleet.last_report("web-1")
            result = report.services.get("web") if report is not None else None
            return result.failed.get(v) if result is not None else None

        reason = wait_for(failed, f"the full disk reported for web {version}")
        assert reason == expected
        assert fleet.installed("web-1", "web") == wanted[:-1], "no partial version"
        assert fleet.partials("web-1", "web") == []

        ballast.unlink()
        freed = time.monotonic()
        fleet.wait_converged(["web-1"], {"web": wanted})
        figures[f"recovery_{version}_s"] = time.monotonic() - freed
    assert len(list((small_disk / "web" / "2").rglob("f*"))) == 200
