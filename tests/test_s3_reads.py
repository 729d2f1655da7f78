"""S3 reads through obstore: when the environment lets them stand in for botocore, and the
errors they give. What they share with every store is in test_store_contract.py."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
from closed_port import refused_url
from s3_server import client_for, point_aws_at

from daybook.errors import AssetNotFoundError, StoreError, StoreUnavailableError
from daybook.model.names import AssetRef
from daybook.store.base import open_store
from daybook.store.s3 import S3Store
from daybook.store.s3_reads import ReadsConfig, S3ReadsStore, reads_config
from daybook.store.s3_shared import S3Tuning
from daybook_testing.s3 import serve_moto

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "AKIDEXAMPLE", "AWS_SECRET_ACCESS_KEY": "secret"}
ONE_ATTEMPT = S3Tuning(max_attempts=1, connect_timeout_s=5)


def config_for(home: Path, **environ: str) -> ReadsConfig | None:
    return reads_config(environ, home)


def test_credentials_in_the_environment_settle_the_chain(tmp_path: Path) -> None:
    config = config_for(tmp_path, **CREDENTIALS, AWS_SESSION_TOKEN="token")
    assert config == ReadsConfig("AKIDEXAMPLE", "secret", "token", "us-east-1", None)


@pytest.mark.parametrize(
    "environ",
    [
        {},
        {"AWS_ACCESS_KEY_ID": "AKIDEXAMPLE"},
        {**CREDENTIALS, "AWS_PROFILE": "prod"},
        {**CREDENTIALS, "AWS_WEB_IDENTITY_TOKEN_FILE": "/var/run/token"},
        {**CREDENTIALS, "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI": "/v2/credentials"},
        {**CREDENTIALS, "AWS_MAX_ATTEMPTS": "3"},
        {**CREDENTIALS, "HTTPS_PROXY": "http://proxy:3128"},
        {**CREDENTIALS, "AWS_CA_BUNDLE": "/etc/ssl/ca.pem"},
        {**CREDENTIALS, "AWS_CA_BUNDLE": "/etc/ssl/ca.pem", "AWS_ENDPOINT_URL": "https://s3.lan"},
    ],
    ids=[
        "nothing",
        "half-credentials",
        "profile",
        "web-identity",
        "container",
        "own-retries",
        "proxy",
        "ca-bundle",
        "ca-bundle-https",
    ],
)
def test_anything_else_in_the_chain_leaves_everything_to_botocore(
    tmp_path: Path, environ: dict[str, str]
) -> None:
    assert config_for(tmp_path, **environ) is None


def test_an_aws_config_file_leaves_everything_to_botocore(tmp_path: Path) -> None:
    # It may hold a region, an endpoint, an addressing style: botocore's to read.
    (tmp_path / ".aws").mkdir()
    (tmp_path / ".aws" / "config").write_text("[default]\nregion = eu-west-1\n")
    assert config_for(tmp_path, **CREDENTIALS) is None
    named = tmp_path / "elsewhere.ini"
    named.write_text("[default]\n")
    assert config_for(tmp_path / "nohome", **CREDENTIALS, AWS_CONFIG_FILE=str(named)) is None


def test_region_and_endpoint_are_read_as_botocore_reads_them(tmp_path: Path) -> None:
    config = config_for(
        tmp_path,
        **CREDENTIALS,
        AWS_DEFAULT_REGION="eu-west-1",
        AWS_ENDPOINT_URL="http://global:9000",
        AWS_ENDPOINT_URL_S3="http://s3-only:9000",
    )
    assert config is not None
    assert (config.region, config.endpoint) == ("eu-west-1", "http://s3-only:9000")
    config = config_for(tmp_path, **CREDENTIALS, AWS_REGION="ap-south-1", AWS_DEFAULT_REGION="x")
    assert config is not None
    assert config.region == "ap-south-1"
    # A CA bundle is about certificates; over plain HTTP there are none to check.
    plain = config_for(
        tmp_path, **CREDENTIALS, AWS_CA_BUNDLE="/etc/ssl/ca.pem", AWS_ENDPOINT_URL="http://s3:9000"
    )
    assert plain is not None


def test_open_store_reads_through_obstore_only_where_the_chain_allows(
    s3_env: str, s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = open_store(f"s3://{s3_bucket}")
    assert isinstance(store, S3ReadsStore)
    store.close()
    monkeypatch.setenv("AWS_SESSION_TOKEN", "")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")
    store = open_store(f"s3://{s3_bucket}")
    assert isinstance(store, S3Store)
    store.close()


def test_a_pull_or_a_signed_url_from_s3_never_loads_botocore(
    s3_env: str, s3_bucket: str, s3_client: Any
) -> None:
    s3_client.put_object(
        Bucket=s3_bucket, Key="web-1.0.tar.gz", Body=b"payload", Metadata={"sha256": "ab" * 32}
    )
    code = (
        "import sys\n"
        "from daybook.model.names import AssetRef\n"
        "from daybook.store.base import open_store\n"
        "store = open_store('s3://' + sys.argv[1])\n"
        "assert [info.version for info in store.list_assets('web')] == ['1.0']\n"
        "assert store.stat(AssetRef('web', '1.0')).sha256 == 'ab' * 32\n"
        "stream = store.open(AssetRef('web', '1.0'))\n"
        "assert (stream.size, stream.sha256) == (7, 'ab' * 32)\n"
        "assert stream.read(3) + stream.read() == b'payload'\n"
        "stream.close()\n"
        "assert 'X-Amz-Signature=' in store.presign(AssetRef('web', '1.0'), 60)\n"
        "store.close()\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('botocore', 'boto3'))\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code, s3_bucket], check=True)


def reads_store(bucket: str, prefix: str = "", tuning: S3Tuning = ONE_ATTEMPT) -> S3ReadsStore:
    config = reads_config(os.environ, Path("/nonexistent"))
    assert config is not None
    return S3ReadsStore(bucket, prefix, config=config, tuning=tuning)


def test_unreachable_endpoint_is_one_clear_line(
    s3_env: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with refused_url() as endpoint:
        monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
        store = reads_store("bucket", "pre")
        with pytest.raises(StoreUnavailableError) as caught:
            store.list_assets()
        store.close()

    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"cannot reach S3 endpoint {endpoint}")
    assert "s3://bucket/pre" in message


def test_missing_bucket_is_a_store_error(s3_env: str) -> None:
    store = reads_store("daybook-no-such-bucket")
    for attempt in (store.list_assets, lambda: store.open(AssetRef("web", "1.0"))):
        with pytest.raises(StoreError) as caught:
            attempt()
        assert type(caught.value) is StoreError
        assert str(caught.value).startswith("bucket daybook-no-such-bucket does not exist")
    store.close()


def test_missing_asset_is_not_found(s3_env: str, s3_bucket: str) -> None:
    store = reads_store(s3_bucket)
    assert store.stat(AssetRef("web", "9")) is None
    with pytest.raises(AssetNotFoundError, match="web 9"):
        store.open(AssetRef("web", "9"))
    store.close()


def answering(status: str, code: str) -> Callable[[Any], Any]:
    """A WSGI wrapper that answers every request with S3's error `code`."""
    body = f"<Error><Code>{code}</Code><Message>said the server</Message></Error>".encode()

    def wrap(app: Any) -> Any:
        def respond(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
            start_response(status, [("Content-Type", "application/xml")])
            return [body]

        return respond

    return wrap


@pytest.fixture
def refusing_server(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Iterator[str]:
    status, code = request.param
    with serve_moto(answering(status, code)) as endpoint:
        point_aws_at(endpoint, monkeypatch, tmp_path)
        yield endpoint


@pytest.mark.parametrize(
    ("refusing_server", "kind", "start"),
    [
        (("403 Forbidden", "AccessDenied"), StoreError, "access denied to s3://bucket/team"),
        (("403 Forbidden", "InvalidAccessKeyId"), StoreError, "S3 rejected the AWS credentials"),
        (("503 Service Unavailable", "SlowDown"), StoreUnavailableError, "S3 at "),
        (("500 Internal Server Error", "InternalError"), StoreUnavailableError, "S3 at "),
    ],
    indirect=["refusing_server"],
    ids=["denied", "bad-credentials", "slow-down", "internal-error"],
)
def test_error_codes_mean_what_they_mean_to_botocore(
    refusing_server: str, kind: type[StoreError], start: str
) -> None:
    store = reads_store("bucket", "team")
    with pytest.raises(StoreError) as caught:
        store.list_assets()
    store.close()
    assert type(caught.value) is kind
    message = str(caught.value)
    assert message.startswith(start)
    assert "\n" not in message
    assert refusing_server in message


def test_uploads_go_through_botocore_and_urls_are_signed(
    s3_env: str, s3_bucket: str, tmp_path: Path
) -> None:
    source = tmp_path / "web-1.0.tar.gz"
    source.write_bytes(b"payload")
    store = reads_store(s3_bucket)
    info = store.upload(source, AssetRef("web", "1.0"), sha256="cd" * 32)
    assert (info.size, info.sha256) == (7, "cd" * 32)
    url = store.presign(AssetRef("web", "1.0"), 60)
    assert "X-Amz-Signature=" in url
    store.close()
    assert client_for(s3_env).get_object(Bucket=s3_bucket, Key="web-1.0.tar.gz")["Body"].read() == (
        b"payload"
    )
