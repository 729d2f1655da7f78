"""One contract suite for every Store: S3 on moto and on SeaweedFS (a real S3 server), with and
without a key prefix, and LocalStore."""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
import pytest
from botocore.stub import Stubber
from botocore.utils import parse_timestamp
from closed_port import refused_url

from daybook.errors import (
    AssetExistsError,
    AssetNotFoundError,
    ConfigError,
    StoreError,
    StoreUnavailableError,
)
from daybook.model.names import AssetRef
from daybook.store.base import AssetInfo, Store, open_store
from daybook.store.local import LocalStore
from daybook.store.s3 import S3Store, S3Tuning, _parse_timestamp
from daybook.store.s3_reads import S3ReadsStore, reads_config_from_environment

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

MIB = 1024 * 1024
# Small pages and a 5 MiB multipart threshold (S3's minimum part size), so that listing
# crosses pages and a 6 MiB upload goes up in two parts, all in a fraction of a second.
TEST_TUNING = S3Tuning(
    multipart_threshold_bytes=5 * MIB,
    multipart_chunk_bytes=5 * MIB,
    list_page_size=2,
    max_attempts=2,
)
# `-reads`: the same store with its reads through obstore (S3ReadsStore).
STORE_KINDS = [
    "local",
    "s3",
    "s3-prefixed",
    "s3-reads",
    "s3-reads-prefixed",
    "seaweed",
    "seaweed-reads",
]
# Backends whose conditional write is atomic: S3 itself and SeaweedFS make If-None-Match
# one step, LocalStore uses link(). moto checks and then writes, so a race there would test
# moto rather than the store; the deterministic faked-HEAD tests cover moto instead.
ATOMIC_WRITE_KINDS = ["local", "seaweed"]


@dataclass
class StoreCase:
    store: Store
    # Writes a raw object (S3) or file (local) at a path relative to the store's root,
    # bypassing the store: how foreign objects get there in real life.
    plant: Callable[[str, bytes], None]


@pytest.fixture(params=STORE_KINDS)
def case(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreCase]:
    if request.param == "local":
        root = tmp_path / "store"

        def plant_file(name: str, data: bytes) -> None:
            path = root / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)

        store: Store = LocalStore(root)
        yield StoreCase(store, plant_file)
        store.close()
        return

    server = "seaweed" if request.param.startswith("seaweed") else "s3"
    request.getfixturevalue(f"{server}_env")
    bucket: str = request.getfixturevalue(f"{server}_bucket")
    client: S3Client = request.getfixturevalue(
        f"{server}_s3_client" if server == "seaweed" else "s3_client"
    )
    prefix = "team/assets" if request.param.endswith("-prefixed") else ""

    def plant_object(name: str, data: bytes) -> None:
        key = f"{prefix}/{name}" if prefix else name
        client.put_object(Bucket=bucket, Key=key, Body=data)

    if "-reads" in request.param:
        config = reads_config_from_environment()
        assert config is not None, "the test environment should settle the AWS chain"
        store = S3ReadsStore(bucket, prefix, config=config, tuning=TEST_TUNING)
    else:
        store = S3Store(bucket, prefix, tuning=TEST_TUNING)
    yield StoreCase(store, plant_object)
    store.close()


def make_file(directory: Path, data: bytes, name: str = "asset.tar.gz") -> tuple[Path, str]:
    path = directory / name
    path.write_bytes(data)
    return path, hashlib.sha256(data).hexdigest()


def push(store: Store, tmp_path: Path, ref: AssetRef, data: bytes, **kwargs: Any) -> AssetInfo:
    source, sha256 = make_file(tmp_path, data, name=f"src-{ref.filename}")
    return store.upload(source, ref, sha256=sha256, **kwargs)


def read_all(store: Store, ref: AssetRef) -> bytes:
    stream = store.open(ref)
    try:
        chunks = []
        while chunk := stream.read(64 * 1024):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        stream.close()


def listed(store: Store, service: str | None = None) -> list[tuple[str, str]]:
    return [(info.service, info.version) for info in store.list_assets(service)]


def daybook_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.name.startswith("daybook") and record.levelno == logging.WARNING
    ]


# --- the contract ------------------------------------------------------------------------------


def test_upload_stat_open_round_trip(case: StoreCase, tmp_path: Path) -> None:
    ref = AssetRef("web", "1.0")
    data = os.urandom(100_000)
    sha256 = hashlib.sha256(data).hexdigest()

    info = push(case.store, tmp_path, ref, data)

    assert (info.ref, info.size, info.sha256) == (ref, len(data), sha256)
    assert info.modified > 0
    assert case.store.stat(ref) == info
    stream = case.store.open(ref)
    try:
        assert (stream.size, stream.sha256) == (len(data), sha256)
        assert stream.read() == data
        assert stream.read(10) == b""
    finally:
        stream.close()


def test_stat_missing_is_none(case: StoreCase) -> None:
    assert case.store.stat(AssetRef("web", "1.0")) is None


def test_open_missing_raises_not_found(case: StoreCase, tmp_path: Path) -> None:
    push(case.store, tmp_path, AssetRef("web", "1.0"), b"one")
    with pytest.raises(AssetNotFoundError, match=r"web 2\.0"):
        case.store.open(AssetRef("web", "2.0"))


def test_empty_store_lists_nothing(case: StoreCase) -> None:
    assert case.store.list_assets() == []
    assert case.store.list_assets("web") == []


def test_list_is_sorted_by_service_then_natural_version(
    case: StoreCase, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    for service, version in [("web", "1.10"), ("api", "2"), ("web", "1.9"), ("web", "1.2")]:
        push(case.store, tmp_path, AssetRef(service, version), f"{service}{version}".encode())

    with caplog.at_level(logging.WARNING):
        everything = case.store.list_assets()

    assert [(info.service, info.version) for info in everything] == [
        ("api", "2"),
        ("web", "1.2"),
        ("web", "1.9"),
        ("web", "1.10"),
    ]
    assert everything[0].size == len(b"api2")
    assert listed(case.store, "web") == [("web", "1.2"), ("web", "1.9"), ("web", "1.10")]
    # The store's own bookkeeping (sidecars, temp files) is never mistaken for junk.
    assert daybook_warnings(caplog) == []


def test_list_of_one_service_excludes_prefix_collisions(case: StoreCase, tmp_path: Path) -> None:
    for service, version in [("svc_1", "1"), ("svc_10", "1"), ("svc_1", "2"), ("svc_100", "3")]:
        push(case.store, tmp_path, AssetRef(service, version), b"x")

    assert listed(case.store, "svc_1") == [("svc_1", "1"), ("svc_1", "2")]
    assert listed(case.store, "svc_10") == [("svc_10", "1")]
    assert listed(case.store, "svc") == []


def test_non_assets_are_skipped_with_one_warning_each(
    case: StoreCase, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    push(case.store, tmp_path, AssetRef("web", "1.0"), b"real")
    junk = ["README.txt", "web-1.0.zip", "web_2.tar.gz", "web-.hidden.tar.gz", "old/web-0.9.tar.gz"]
    for name in junk:
        case.plant(name, b"junk")

    with caplog.at_level(logging.WARNING):
        assert listed(case.store) == [("web", "1.0")]

    warnings = daybook_warnings(caplog)
    assert len(warnings) == len(junk)
    for name in junk:
        # A local subfolder is reported as itself; an S3 key in a "subfolder" by its full key.
        shown = name.split("/")[0]
        assert any(shown in warning for warning in warnings), (name, warnings)


def test_upload_refuses_an_existing_version_unless_overwrite(
    case: StoreCase, tmp_path: Path
) -> None:
    ref = AssetRef("web", "1.0")
    push(case.store, tmp_path, ref, b"first")

    with pytest.raises(AssetExistsError, match=r"web 1\.0"):
        push(case.store, tmp_path, ref, b"second")
    assert read_all(case.store, ref) == b"first"

    info = push(case.store, tmp_path, ref, b"third!", overwrite=True)
    assert info.sha256 == hashlib.sha256(b"third!").hexdigest()
    assert info.size == len(b"third!")
    assert read_all(case.store, ref) == b"third!"
    stream = case.store.open(ref)
    stream.close()
    assert stream.sha256 == info.sha256


@pytest.mark.parametrize("size", [10, 6 * MIB + 1], ids=["single", "multipart"])
def test_existing_version_is_refused_even_when_the_precheck_misses_it(
    case: StoreCase, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, size: int
) -> None:
    # Another push landing between the existence check and the write: the write itself
    # (S3 If-None-Match, local link()) must still refuse.
    ref = AssetRef("web", "1.0")
    push(case.store, tmp_path, ref, b"winner")
    monkeypatch.setattr(case.store, "stat", lambda ref: None)

    with pytest.raises(AssetExistsError):
        push(case.store, tmp_path, ref, b"l" * size)

    monkeypatch.undo()
    assert read_all(case.store, ref) == b"winner"
    info = case.store.stat(ref)
    assert info is not None
    assert info.sha256 == hashlib.sha256(b"winner").hexdigest()


@pytest.mark.parametrize("case", ATOMIC_WRITE_KINDS, indirect=True)
def test_concurrent_pushes_of_one_version_have_one_winner(case: StoreCase, tmp_path: Path) -> None:
    ref = AssetRef("web", "1.0")
    sources = [make_file(tmp_path, f"push {n}".encode() * 1000, name=f"p{n}") for n in range(4)]
    start = threading.Barrier(len(sources))

    def push_one(source: tuple[Path, str]) -> str | None:
        start.wait(timeout=10)
        try:
            case.store.upload(source[0], ref, sha256=source[1])
        except AssetExistsError:
            return None
        return source[1]

    with ThreadPoolExecutor(len(sources)) as pool:
        winners = [sha for sha in pool.map(push_one, sources) if sha is not None]

    assert len(winners) == 1
    info = case.store.stat(ref)
    assert info is not None
    assert info.sha256 == winners[0]
    assert hashlib.sha256(read_all(case.store, ref)).hexdigest() == winners[0]


def test_delete_removes_one_version_and_its_checksum(case: StoreCase, tmp_path: Path) -> None:
    old, kept = AssetRef("web", "1"), AssetRef("web", "2")
    push(case.store, tmp_path, old, b"one")
    push(case.store, tmp_path, kept, b"two")
    case.store.delete(old)
    assert listed(case.store) == [("web", "2")]
    assert case.store.stat(old) is None
    with pytest.raises(AssetNotFoundError):
        case.store.open(old)
    assert read_all(case.store, kept) == b"two"
    # Pushed again, it is a new asset: no checksum of the deleted one lingers.
    info = push(case.store, tmp_path, old, b"one again")
    assert info.sha256 == hashlib.sha256(b"one again").hexdigest()
    assert read_all(case.store, old) == b"one again"


def test_deleting_a_missing_version_is_no_error(case: StoreCase, tmp_path: Path) -> None:
    case.store.delete(AssetRef("web", "1"))  # an empty store
    push(case.store, tmp_path, AssetRef("web", "2"), b"two")
    case.store.delete(AssetRef("web", "1"))
    assert listed(case.store) == [("web", "2")]


def test_progress_adds_up_to_the_file_size(case: StoreCase, tmp_path: Path) -> None:
    data = os.urandom(3 * MIB + 123)
    moved: list[int] = []
    lock = threading.Lock()

    def progress(count: int) -> None:
        with lock:  # S3 reports from its transfer threads
            moved.append(count)

    push(case.store, tmp_path, AssetRef("web", "1.0"), data, progress=progress)

    assert sum(moved) == len(data)
    assert len(moved) > 1


def test_large_upload_round_trips(case: StoreCase, tmp_path: Path) -> None:
    # Above TEST_TUNING's multipart threshold: S3 sends two parts.
    data = os.urandom(6 * MIB + 17)
    ref = AssetRef("big", "1.0")
    moved: list[int] = []
    lock = threading.Lock()

    def progress(count: int) -> None:
        with lock:
            moved.append(count)

    info = push(case.store, tmp_path, ref, data, progress=progress)

    assert sum(moved) == len(data)
    assert (info.size, info.sha256) == (len(data), hashlib.sha256(data).hexdigest())
    assert read_all(case.store, ref) == data


def test_url_reopens_the_same_store(case: StoreCase, tmp_path: Path) -> None:
    push(case.store, tmp_path, AssetRef("web", "1.0"), b"x")
    reopened = open_store(case.store.url)
    try:
        assert reopened.url == case.store.url
        assert reopened.list_assets() == case.store.list_assets()
    finally:
        reopened.close()


# --- S3 only -----------------------------------------------------------------------------------


def test_s3_url_names_bucket_and_prefix(s3_env: str) -> None:
    plain = S3Store("bucket")
    prefixed = S3Store("bucket", "/a/b/")
    try:
        assert plain.url == "s3://bucket"
        assert prefixed.url == "s3://bucket/a/b"
        assert prefixed.key_for(AssetRef("web", "1.0")) == "a/b/web-1.0.tar.gz"
        assert plain.key_for(AssetRef("web", "1.0")) == "web-1.0.tar.gz"
    finally:
        plain.close()
        prefixed.close()


def test_s3_reads_load_neither_boto3_nor_s3transfer(
    s3_env: str, s3_bucket: str, s3_client: S3Client
) -> None:
    # Pulls and minion installs only list and download; s3transfer (and boto3 around it) is
    # for uploads, and importing them would cost every pull some 30 ms of CPU.
    s3_client.put_object(Bucket=s3_bucket, Key="web-1.0.tar.gz", Body=b"payload")
    code = (
        "import sys\n"
        "from daybook.model.names import AssetRef\n"
        "from daybook.store.s3 import S3Store\n"
        "store = S3Store(sys.argv[1])\n"
        "assert [info.version for info in store.list_assets('web')] == ['1.0']\n"
        "stream = store.open(AssetRef('web', '1.0'))\n"
        "assert stream.read() == b'payload'\n"
        "stream.close()\n"
        "store.close()\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('boto3', 's3transfer'))\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code, s3_bucket], check=True)


def test_s3_listing_follows_every_page(s3_env: str, s3_bucket: str, s3_client: S3Client) -> None:
    with ThreadPoolExecutor(8) as pool:
        list(
            pool.map(
                lambda n: s3_client.put_object(Bucket=s3_bucket, Key=f"web-{n}.tar.gz", Body=b"x"),
                range(25),
            )
        )
    pages = 0

    def count_page(**kwargs: Any) -> None:
        nonlocal pages
        pages += 1

    s3_client.meta.events.register("after-call.s3.ListObjectsV2", count_page)
    store = S3Store(s3_bucket, client=s3_client, tuning=S3Tuning(list_page_size=4))

    versions = [info.version for info in store.list_assets("web")]

    assert versions == [str(n) for n in range(25)]
    assert pages == 7


def test_s3_multipart_upload_sends_parts(
    s3_env: str, s3_bucket: str, s3_client: S3Client, tmp_path: Path
) -> None:
    store = S3Store(s3_bucket, tuning=TEST_TUNING)
    ref = AssetRef("big", "1.0")
    try:
        push(store, tmp_path, ref, os.urandom(6 * MIB + 1))
    finally:
        store.close()

    head = s3_client.head_object(Bucket=s3_bucket, Key=ref.filename)
    # A multipart object's ETag is `"<md5 of part md5s>-<part count>"`.
    assert head["ETag"].strip('"').endswith("-2")
    assert head["ContentType"] == "application/gzip"


def test_s3_objects_outside_the_prefix_are_invisible(
    s3_env: str, s3_bucket: str, s3_client: S3Client, caplog: pytest.LogCaptureFixture
) -> None:
    for key in ["web-1.tar.gz", "other/web-2.tar.gz", "team/assets/web-3.tar.gz", "team/x"]:
        s3_client.put_object(Bucket=s3_bucket, Key=key, Body=b"x")
    store = S3Store(s3_bucket, "team/assets", tuning=TEST_TUNING)
    try:
        with caplog.at_level(logging.WARNING):
            assert listed(store) == [("web", "3")]
    finally:
        store.close()

    assert daybook_warnings(caplog) == []


def test_s3_endpoint_can_be_set_for_s3_alone(
    s3_env: str, s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # botocore reads AWS_ENDPOINT_URL_S3 itself, and it beats the global AWS_ENDPOINT_URL.
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://192.0.2.1:9")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_env)
    store = S3Store(s3_bucket, tuning=TEST_TUNING)
    try:
        assert store.list_assets() == []
    finally:
        store.close()


def test_s3_unreachable_endpoint_is_one_clear_line(
    s3_env: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with refused_url() as endpoint:
        monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
        store = S3Store("bucket", "pre", tuning=S3Tuning(max_attempts=1, connect_timeout_s=5))
        try:
            # Unavailable: a fault that may clear by itself, which an installer retries.
            with pytest.raises(StoreUnavailableError) as caught:
                store.list_assets()
        finally:
            store.close()

    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"cannot reach S3 endpoint {endpoint}")
    assert "s3://bucket/pre" in message


def test_s3_retries_are_the_users_when_set(s3_env: str, monkeypatch: pytest.MonkeyPatch) -> None:
    def retries() -> dict[str, Any]:
        store = S3Store("bucket", tuning=S3Tuning(max_attempts=7))
        try:
            return dict(store._client.meta.config.retries or {})
        finally:
            store.close()

    assert retries() == {"mode": "standard", "total_max_attempts": 7}
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")
    monkeypatch.setenv("AWS_RETRY_MODE", "adaptive")
    assert retries() == {"mode": "adaptive", "total_max_attempts": 2}


def test_s3_missing_credentials_is_a_config_error(
    s3_env: str, s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    store = S3Store(s3_bucket, tuning=TEST_TUNING)
    try:
        with pytest.raises(ConfigError) as caught:
            store.list_assets()
    finally:
        store.close()

    message = str(caught.value)
    assert "\n" not in message
    assert "no AWS credentials found" in message
    assert "AWS_ACCESS_KEY_ID" in message
    assert s3_bucket in message


def test_s3_missing_bucket_is_a_store_error(s3_env: str, tmp_path: Path) -> None:
    store = S3Store("daybook-no-such-bucket", tuning=TEST_TUNING)
    source, sha256 = make_file(tmp_path, b"x")
    ref = AssetRef("web", "1.0")
    attempts: list[Callable[[], object]] = [
        store.list_assets,
        lambda: store.open(ref),
        lambda: store.upload(source, ref, sha256=sha256),
    ]
    try:
        for attempt in attempts:
            with pytest.raises(StoreError) as caught:
                attempt()
            assert type(caught.value) is StoreError
            assert str(caught.value).startswith("bucket daybook-no-such-bucket does not exist")
    finally:
        store.close()


def test_s3_access_denied_names_the_location(moto_server: str) -> None:
    # moto does not enforce policies, so the 403 is stubbed; the mapping is what is tested.
    client = boto3.client(
        "s3",
        endpoint_url=moto_server,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    store = S3Store("bucket", "team", client=client)
    with Stubber(client) as stubber:
        stubber.add_client_error(
            "list_objects_v2", "AccessDenied", "Access Denied", http_status_code=403
        )
        with pytest.raises(StoreError) as caught:
            store.list_assets()
    client.close()

    message = str(caught.value)
    assert message.startswith("access denied to s3://bucket/team")
    assert moto_server in message
    assert not isinstance(caught.value, StoreUnavailableError), "retrying would not help"


@pytest.mark.parametrize(("code", "status"), [("SlowDown", 503), ("InternalError", 500)])
def test_s3_server_faults_are_unavailable_not_final(
    moto_server: str, code: str, status: int
) -> None:
    client = boto3.client(
        "s3",
        endpoint_url=moto_server,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    store = S3Store("bucket", client=client)
    with Stubber(client) as stubber:
        stubber.add_client_error("list_objects_v2", code, "try again", http_status_code=status)
        with pytest.raises(StoreUnavailableError, match=code):
            store.list_assets()
    client.close()


# --- LocalStore only ---------------------------------------------------------------------------


def test_local_store_ignores_its_leftovers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = LocalStore(tmp_path / "store")
    push(store, tmp_path, AssetRef("web", "1.0"), b"x")
    (tmp_path / "store" / ".daybook-tmp-abandoned").write_bytes(b"half a push")

    with caplog.at_level(logging.WARNING):
        assert listed(store) == [("web", "1.0")]

    assert daybook_warnings(caplog) == []
    assert sorted(path.name for path in (tmp_path / "store").iterdir()) == [
        ".daybook-tmp-abandoned",
        "web-1.0.tar.gz",
        "web-1.0.tar.gz.meta.json",
    ]


def test_local_store_reports_no_checksum_for_a_file_it_did_not_write(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    ref = AssetRef("web", "1.0")
    push(store, tmp_path, ref, b"pushed")
    # Replaced behind the store's back: the sidecar describes another file now.
    replacement = tmp_path / "replacement"
    replacement.write_bytes(b"swapped")
    os.replace(replacement, tmp_path / "store" / ref.filename)

    info = store.stat(ref)
    assert info is not None
    assert info.sha256 is None
    assert read_all(store, ref) == b"swapped"


def test_listing_and_stat_agree_on_when_an_asset_was_modified(
    case: StoreCase, tmp_path: Path
) -> None:
    # S3 lists ISO 8601 times and heads answer HTTP dates; both must name the same second.
    before = time.time()
    push(case.store, tmp_path, AssetRef("web", "1.0"), b"data")
    (listed,) = case.store.list_assets()
    stat = case.store.stat(AssetRef("web", "1.0"))
    assert stat is not None
    assert int(listed.modified) == int(stat.modified)
    assert before - 5 <= listed.modified <= time.time() + 5


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-26T17:00:01.250Z", datetime(2026, 11, 26, 17, 0, 1, 250000, UTC)),
        ("2026-11-26T17:00:01+00:00", datetime(2026, 11, 26, 17, 0, 1, tzinfo=UTC)),
        ("2026-11-26T18:00:01+01:00", datetime(2026, 11, 26, 17, 0, 1, tzinfo=UTC)),
        ("Thu, 26 Nov 2026 17:00:01 GMT", datetime(2026, 11, 26, 17, 0, 1, tzinfo=UTC)),
        ("2026-11-26T17:00:01", datetime(2026, 11, 26, 17, 0, 1)),  # naive, as botocore has it
    ],
)
def test_s3_timestamps_parse_as_botocore_would(text: str, expected: datetime) -> None:
    parsed = _parse_timestamp(text)
    assert parsed == expected
    assert parsed == parse_timestamp(text)
