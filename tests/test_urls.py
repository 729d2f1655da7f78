"""Store and registry URLs: malformed ones are one clear ConfigError wherever they are opened."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from daybook.errors import ConfigError
from daybook.registry.base import open_leadership, open_registry
from daybook.registry.keystore import open_keystore
from daybook.store.base import open_store
from daybook.urls import check_endpoint_url, file_url_path, s3_bucket_and_prefix


@pytest.mark.parametrize(
    "opener", [open_store, open_registry, open_keystore, open_leadership], ids=lambda f: f.__name__
)
@pytest.mark.parametrize("url", ["consul://[::1", "s3://[x", "file://[x", "consul://c:http"])
def test_every_opener_refuses_a_malformed_url(opener: Callable[[str], object], url: str) -> None:
    with pytest.raises(ConfigError, match="is malformed"):
        opener(url)


@pytest.mark.parametrize("url", ["file://host/x", "file:relative", "file://"])
def test_a_file_url_names_an_absolute_local_path(url: str) -> None:
    with pytest.raises(ConfigError, match="is not file:///ABSOLUTE/PATH"):
        file_url_path(url, "store")


def test_a_file_url_path(tmp_path: Path) -> None:
    assert file_url_path(f"file://{tmp_path}/store", "store") == tmp_path / "store"
    assert file_url_path(f"file://localhost{tmp_path}", "store") == tmp_path


def test_a_file_url_path_is_percent_decoded_as_as_uri_encodes_it(tmp_path: Path) -> None:
    odd = tmp_path / "h#sh?q x%41"
    assert file_url_path(odd.as_uri(), "store") == odd
    assert file_url_path("file:///srv/h%23sh", "registry") == Path("/srv/h#sh")


@pytest.mark.parametrize("url", ["file:///srv/h#sh", "file:///srv/q?x", "s3://bucket/p#x"])
def test_a_raw_hash_or_question_mark_would_cut_the_path_short(url: str) -> None:
    opener = open_store if url.startswith("s3") else open_registry
    with pytest.raises(ConfigError, match="`\\?` or `#`"):
        opener(url)


@pytest.mark.parametrize(
    ("url", "bucket", "prefix"),
    [
        ("s3://my-assets.example/daybook/", "my-assets.example", "daybook"),
        ("s3://abc", "abc", ""),
        ("s3://" + "a" * 63, "a" * 63, ""),
        # Legacy names botocore still sends: upper case, underscores, past 63 characters.
        ("s3://Legacy_Bucket/p", "Legacy_Bucket", "p"),
        ("s3://" + "b" * 255, "b" * 255, ""),
    ],
)
def test_s3_bucket_names_botocore_accepts_pass(url: str, bucket: str, prefix: str) -> None:
    assert s3_bucket_and_prefix(url) == (bucket, prefix)


@pytest.mark.parametrize(
    "bucket", ["bu cket", "ab", "-bucket", "bucket-", "b" * 256, "user@bucket", "b%41c", "bück"]
)
def test_s3_bucket_names_no_request_can_carry_are_refused(bucket: str) -> None:
    with pytest.raises(ConfigError, match="is not an S3 bucket name"):
        s3_bucket_and_prefix(f"s3://{bucket}/prefix")


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("not-a-url", "is not an http:// or https:// URL with a host"),
        ("127.0.0.1:8333", "is not an http:// or https:// URL with a host"),
        ("ftp://127.0.0.1", "is not an http:// or https:// URL with a host"),
        ("http://127.0.0.1:99999", "is malformed: Port out of range"),
        ("http://[::1", "is malformed"),
        ("http://127.0.0.1:0", "0 is not a port"),
    ],
)
def test_an_s3_endpoint_no_client_can_use_is_refused(url: str, fragment: str) -> None:
    """obstore panicked on these, mid-request, with a Rust backtrace."""
    with pytest.raises(ConfigError, match=fragment):
        check_endpoint_url(url, "AWS_ENDPOINT_URL")


@pytest.mark.parametrize("url", ["http://127.0.0.1:8333", "https://s3.eu-west-1.amazonaws.com"])
def test_an_http_endpoint_passes(url: str) -> None:
    assert check_endpoint_url(url, "AWS_ENDPOINT_URL") == url


@pytest.mark.parametrize("url", ["s3://bucket1/a//b", "s3://bucket1/../x", "s3://bucket1/a/./b"])
def test_an_s3_prefix_with_an_empty_dot_or_dot_dot_segment_is_refused(url: str) -> None:
    """S3 would take them as keys of their own; obstore refused them mid-command (exit 1)."""
    with pytest.raises(ConfigError, match=r"empty, `\.` or `\.\.` segment"):
        s3_bucket_and_prefix(url)
