"""The minions' signed-URL store: URLs signed against a real S3 server (SeaweedFS checks
signatures and expiry), and transfers broken off by a real HTTP server on loopback."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest
from archives import make_asset

from daybook.errors import StoreError
from daybook.install.installer import Installer
from daybook.model.downloads import Download
from daybook.model.names import AssetRef
from daybook.store.base import Store
from daybook.store.http_stream import HttpAssetStream
from daybook.store.s3 import S3Store
from daybook.store.s3_reads import S3ReadsStore, reads_config
from daybook.store.signed import SignedStore
from daybook_testing.waiting import wait_for

REF = AssetRef("web", "1")


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def answering(ref: AssetRef, data: bytes, url: str) -> SignedStore:
    """A signed store whose master answers with `url` for `ref`, and the bytes' SHA-256."""

    def ask(service: str, versions: tuple[str, ...]) -> tuple[Download, ...]:
        signed = url if ref.version in versions else None
        return (Download(ref.service, ref.version, len(data), sha256_of(data), signed),)

    return SignedStore("s3://bucket", ask, pause=lambda _s: True)


# -- against SeaweedFS, which checks what it is given ---------------------------------------------


@pytest.fixture(params=["botocore", "obstore"])
def seaweed_store(
    request: pytest.FixtureRequest, seaweed_env: str, seaweed_bucket: str
) -> Iterator[Store]:
    """The store that signs: botocore's, and obstore's where the environment allows it."""
    store: Store
    if request.param == "botocore":
        store = S3Store(seaweed_bucket, "daybook")
    else:
        config = reads_config(os.environ, Path("/nonexistent"))
        assert config is not None
        store = S3ReadsStore(seaweed_bucket, "daybook", config=config)
    yield store
    store.close()


def pushed(store: Store, tmp_path: Path) -> bytes:
    path = make_asset(tmp_path, REF.service, REF.version)
    data = path.read_bytes()
    store.upload(path, REF, sha256=sha256_of(data))
    return data


def test_a_signed_url_installs_and_a_forged_one_is_refused_clearly(
    seaweed_store: Store, tmp_path: Path
) -> None:
    data = pushed(seaweed_store, tmp_path)
    url = seaweed_store.presign(REF, 60)
    good = Installer(answering(REF, data, url), tmp_path / "good").sync(["web"])
    assert good["web"].installed == ("1",)

    # The signature of another request: the store refuses it, and the report says so.
    forged = url.replace("X-Amz-Expires=60", "X-Amz-Expires=600")
    refused = Installer(answering(REF, data, forged), tmp_path / "forged").sync(["web"])
    reason = refused["web"].failed["1"]
    assert "the store refused the download URL" in reason
    assert "HTTP 403" in reason
    assert "X-Amz-Signature" not in reason  # the URL's secret part never shows


def test_an_expired_url_is_refused(seaweed_store: Store, tmp_path: Path) -> None:
    data = pushed(seaweed_store, tmp_path)
    url = seaweed_store.presign(REF, 1)

    def refusal() -> str | None:
        try:
            HttpAssetStream(url, size=len(data), sha256=sha256_of(data)).close()
        except StoreError as exc:
            return str(exc)
        return None

    reason = wait_for(refusal, "the URL to expire")
    assert "HTTP 403" in reason


# -- transfers broken off -------------------------------------------------------------------------


class FlakyHandler(BaseHTTPRequestHandler):
    """Serves one body; the first response is cut off halfway, later ones honour Range."""

    body: ClassVar[bytes] = b""
    cut: ClassVar[bool] = True
    ranges: ClassVar[list[str | None]] = []

    def do_GET(self) -> None:
        requested = self.headers.get("Range")
        type(self).ranges.append(requested)
        start = int(requested.removeprefix("bytes=").rstrip("-")) if requested else 0
        rest = self.body[start:]
        self.send_response(206 if requested else 200)
        self.send_header("Content-Length", str(len(rest)))
        if requested:
            self.send_header(
                "Content-Range", f"bytes {start}-{len(self.body) - 1}/{len(self.body)}"
            )
        self.end_headers()
        if type(self).cut:
            type(self).cut = False
            self.wfile.write(rest[: len(rest) // 2])
            self.wfile.flush()
            self.connection.shutdown(2)  # SHUT_RDWR: the connection drops mid-body
            return
        self.wfile.write(rest)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def flaky_server(tmp_path: Path) -> Iterator[str]:
    data = make_asset(tmp_path, REF.service, REF.version).read_bytes()
    FlakyHandler.body, FlakyHandler.cut, FlakyHandler.ranges = data, True, []
    server = ThreadingHTTPServer(("127.0.0.1", 0), FlakyHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/web-1.tar.gz?X-Amz-Signature=secret"
    server.shutdown()
    server.server_close()
    thread.join()


def test_a_dropped_connection_resumes_where_it_stopped(flaky_server: str, tmp_path: Path) -> None:
    data = FlakyHandler.body
    results = Installer(answering(REF, data, flaky_server), tmp_path / "install").sync(["web"])
    assert results["web"].installed == ("1",)
    assert FlakyHandler.ranges == [None, f"bytes={len(data) // 2}-"]
    assert (tmp_path / "install" / "web" / "1" / "bin" / "run").is_file()


def test_bytes_that_do_not_match_the_masters_sha256_are_refused(
    flaky_server: str, tmp_path: Path
) -> None:
    FlakyHandler.cut = False

    def ask(service: str, versions: tuple[str, ...]) -> tuple[Download, ...]:
        size = len(FlakyHandler.body)
        return (Download("web", "1", size, "0" * 64, flaky_server if versions else None),)

    store = SignedStore("s3://bucket", ask, pause=lambda _s: True)
    results = Installer(store, tmp_path / "install").sync(["web"])
    assert "SHA-256 mismatch" in results["web"].failed["1"]
    assert not (tmp_path / "install" / "web" / "1").exists()


def test_a_minion_installs_through_signed_urls_without_loading_botocore(
    flaky_server: str, tmp_path: Path
) -> None:
    FlakyHandler.cut = False
    data = FlakyHandler.body
    # What a minion process imports, then an install through the signed store, as it runs one.
    script = f"""
import sys
from pathlib import Path
import minion.process, minion.downloads
from daybook.install.installer import Installer
from daybook.model.downloads import Download
from daybook.store.signed import SignedStore

def ask(service, versions):
    return (Download("web", "1", {len(data)}, {sha256_of(data)!r}, {flaky_server!r}),)

results = Installer(SignedStore("s3://bucket", ask), Path({str(tmp_path)!r})).sync(["web"])
assert results["web"].installed == ("1",), results
loaded = sorted(name for name in sys.modules if name.split(".")[0] in ("botocore", "boto3"))
assert not loaded, loaded
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "web" / "1" / "bin" / "run").is_file()
