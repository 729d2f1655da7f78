"""What both S3 clients (botocore's and obstore's) share, without importing either: the
store's object layout, the default region, the connection settings, and what S3's error
codes mean to Daybook."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from daybook.errors import DaybookError, StoreError, StoreUnavailableError
from daybook.model.names import AssetRef, parse_asset_filename

log = logging.getLogger("daybook.store.s3")

MIB = 1024 * 1024
DEFAULT_REGION = "us-east-1"
# Object metadata key (sent as `x-amz-meta-sha256`) holding the hex SHA-256 of the archive.
SHA256_METADATA_KEY = "sha256"

NOT_FOUND_CODES = frozenset({"404", "NoSuchKey", "NotFound"})
_ACCESS_DENIED_CODES = frozenset({"403", "AccessDenied", "Forbidden", "AllAccessDisabled"})
_BAD_CREDENTIAL_CODES = frozenset(
    {"InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken"}
)
# Server-side and throttling errors that clear by themselves (the 5xx codes also do).
_UNAVAILABLE_CODES = frozenset(
    {"SlowDown", "RequestTimeout", "ServiceUnavailable", "InternalError", "Throttling"}
)


@dataclass(frozen=True)
class S3Tuning:
    """Transfer and connection settings; the defaults suit real S3 over a WAN."""

    connect_timeout_s: float = 10.0
    read_timeout_s: float = 60.0
    # Total attempts per request, first try included, in botocore's "standard" retry mode.
    max_attempts: int = 5
    max_pool_connections: int = 16
    # Files at least this large go up as a multipart upload, in parts of `multipart_chunk_bytes`.
    multipart_threshold_bytes: int = 64 * MIB
    multipart_chunk_bytes: int = 16 * MIB
    # Parallel part uploads; kept below max_pool_connections so parts never wait for a socket.
    max_concurrency: int = 8
    # Keys per ListObjectsV2 page; None leaves S3's own default (1000).
    list_page_size: int | None = None


def error_for_code(
    code: str, message: str, *, url: str, bucket: str, endpoint: str | None
) -> DaybookError:
    """One line for an S3 error response, naming the store and the endpoint; never
    credentials. `code` is S3's error code, else the HTTP status."""
    where = f"{url} (endpoint {endpoint})"
    message = one_line(message) or "no message"
    if code == "NoSuchBucket":
        return StoreError(f"bucket {bucket} does not exist at endpoint {endpoint}")
    if code in _ACCESS_DENIED_CODES:
        return StoreError(
            f"access denied to {url} at endpoint {endpoint}: check the bucket policy "
            f"and the credentials' permissions ({message})"
        )
    if code in _BAD_CREDENTIAL_CODES:
        return StoreError(f"S3 rejected the AWS credentials for {where}: {code}: {message}")
    if code in _UNAVAILABLE_CODES or code.startswith("5"):
        return StoreUnavailableError(f"S3 at {endpoint} failed for {url}: {code}: {message}")
    return StoreError(f"S3 error for {where}: {code}: {message}")


def asset_for_key(bucket: str, key_prefix: str, key: str) -> AssetRef | None:
    """The asset an object key under the store's prefix names; None, with a warning, for
    anything else in the bucket (the empty "folder" object of S3 consoles silently)."""
    name = key[len(key_prefix) :]
    if not name:
        return None
    if "/" in name:
        log.warning("skipping s3://%s/%s: in a subfolder of the store", bucket, key)
        return None
    ref = parse_asset_filename(name)
    if ref is None:
        log.warning("skipping s3://%s/%s: not an asset name (NAME-VERSION.tar.gz)", bucket, key)
    return ref


def one_line(text: object) -> str:
    return " ".join(str(text).split())
