"""S3 reads through obstore (Rust's object_store), writes through botocore.

`daybook pull` and a minion installing with its own credentials mostly read: a listing,
then one GET per version. Importing botocore and building its client costs about 0.23 s of
CPU before the first request; obstore's import and store cost about 17 ms. But the AWS
credential chain is botocore's to define (environment, profiles, SSO, container and
instance roles, web identity, process credentials), and the two clients read configuration
differently. So this store is used only where the environment settles everything botocore
would look at, exactly as botocore would settle it (`reads_config`); anywhere else
`open_store` keeps botocore for everything. Presigned URLs are signed by obstore too (SigV4
query signing, no request), so a master that lists and signs never loads botocore: about
20 MB of its S3 models and code. Uploads and deletes always go through botocore
(`S3Store`), opened on their first use.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from obstore import exceptions as obstore_errors
from obstore import sign
from obstore.store import S3Store as ObjectStore

from daybook.errors import (
    AssetNotFoundError,
    DaybookError,
    StoreError,
    StoreUnavailableError,
)
from daybook.model.names import AssetRef, check_service, version_sort_key
from daybook.store.base import AssetInfo, ProgressCallback
from daybook.store.s3_shared import (
    DEFAULT_REGION,
    NOT_FOUND_CODES,
    SHA256_METADATA_KEY,
    S3Tuning,
    asset_for_key,
    error_for_code,
    one_line,
)
from daybook.urls import check_endpoint_url

if TYPE_CHECKING:
    from obstore import BytesStream, ObjectMeta
    from obstore.store import ClientConfig, RetryConfig, S3Config

    from daybook.store.s3 import S3Store

log = logging.getLogger(__name__)

# Environment variables that point botocore somewhere this store would not follow it: a
# profile, a credentials source other than the variables, a CA bundle, proxies, retry and
# endpoint settings of its own. Any of them set, and botocore does everything.
_BOTOCORE_ONLY_VARIABLES = (
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_ROLE_ARN",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_RETRY_MODE",
    "AWS_MAX_ATTEMPTS",
    "AWS_USE_FIPS_ENDPOINT",
    "AWS_USE_DUALSTACK_ENDPOINT",
    "AWS_S3_US_EAST_1_REGIONAL_ENDPOINT",
    "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "http_proxy",
    "https_proxy",
    "all_proxy",
)
# S3's XML error body, as obstore quotes it in its messages.
_XML_FIELD = re.compile(r"<(Code|Message)>([^<]{0,300})</\1>")
_HTTP_STATUS = re.compile(r"status code: (\d{3})")
# The chunks obstore hands over while streaming a GET; it fetches ahead of the reader.
STREAM_CHUNK_BYTES = 1024 * 1024


@dataclass(frozen=True)
class ReadsConfig:
    """What the environment settles for an S3 client, read as botocore reads it."""

    access_key_id: str
    secret_access_key: str
    session_token: str | None
    region: str
    endpoint: str | None


def reads_config(environ: Mapping[str, str], home: Path) -> ReadsConfig | None:
    """The settings for obstore when the environment alone decides what botocore would
    use, else None (botocore does everything).

    Credentials in AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY are the first source in
    botocore's chain, so they win over every other source. Botocore also reads the AWS
    config file (region, endpoint_url, addressing style, retries, a CA bundle...): when one
    exists, this store steps aside rather than read it differently.
    """
    access_key = environ.get("AWS_ACCESS_KEY_ID")
    secret_key = environ.get("AWS_SECRET_ACCESS_KEY")
    if not access_key or not secret_key:
        return None
    if any(environ.get(name) for name in _BOTOCORE_ONLY_VARIABLES):
        return None
    config_file = environ.get("AWS_CONFIG_FILE") or str(home / ".aws" / "config")
    if Path(config_file).expanduser().exists():
        return None
    region = environ.get("AWS_REGION") or environ.get("AWS_DEFAULT_REGION") or DEFAULT_REGION
    # botocore's service-specific variable wins over the global one.
    endpoint = environ.get("AWS_ENDPOINT_URL_S3") or environ.get("AWS_ENDPOINT_URL") or None
    if endpoint is not None:
        name = "AWS_ENDPOINT_URL_S3" if environ.get("AWS_ENDPOINT_URL_S3") else "AWS_ENDPOINT_URL"
        check_endpoint_url(endpoint, name)
    # botocore trusts only the CA bundle given; obstore could only add it to its own roots.
    # Over plain HTTP no certificate is checked, so the bundle changes nothing there.
    plain_http = endpoint is not None and endpoint.startswith("http://")
    if environ.get("AWS_CA_BUNDLE") and not plain_http:
        return None
    return ReadsConfig(
        access_key_id=access_key,
        secret_access_key=secret_key,
        session_token=environ.get("AWS_SESSION_TOKEN") or None,
        region=region,
        endpoint=endpoint,
    )


def reads_config_from_environment() -> ReadsConfig | None:
    return reads_config(os.environ, Path.home())


class S3ReadsStore:
    """The S3 store with its reads through obstore; see the module's docstring."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        config: ReadsConfig,
        tuning: S3Tuning = S3Tuning(),  # frozen, so sharing one default is safe
    ) -> None:
        self._bucket = bucket
        self._prefix = prefix.strip("/")
        self._key_prefix = f"{self._prefix}/" if self._prefix else ""
        self._config = config
        self._tuning = tuning
        self._endpoint = config.endpoint or f"https://s3.{config.region}.amazonaws.com"
        settings: S3Config = {
            "access_key_id": config.access_key_id,
            "secret_access_key": config.secret_access_key,
            "region": config.region,
            # Path-style, as botocore addresses a custom endpoint; AWS takes both.
            "virtual_hosted_style_request": config.endpoint is None,
        }
        if config.session_token:
            settings["session_token"] = config.session_token
        if config.endpoint:
            settings["endpoint"] = config.endpoint
        self._reads = ObjectStore(
            bucket,
            config=settings,
            client_options=_client_options(tuning, config.endpoint),
            retry_config=_retry_config(tuning),
        )
        self._writes: S3Store | None = None
        self._writes_lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"s3://{self._bucket}/{self._prefix}" if self._prefix else f"s3://{self._bucket}"

    def key_for(self, ref: AssetRef) -> str:
        return self._key_prefix + ref.filename

    def list_assets(self, service: str | None = None) -> list[AssetInfo]:
        # object_store lists whole path segments (`prefix/`); a service's objects share a
        # name prefix instead (`svc-`, the trailing dash keeping `svc_1` from `svc_10-...`),
        # so list the store's folder from just before it (S3's StartAfter) and stop past it.
        name_prefix = self._key_prefix + (f"{check_service(service)}-" if service else "")
        assets: list[AssetInfo] = []
        with self._translate_errors():
            for meta in self._listing(name_prefix):
                ref = asset_for_key(self._bucket, self._key_prefix, meta["path"])
                if ref is not None and (service is None or ref.service == service):
                    assets.append(AssetInfo(ref, meta["size"], meta["last_modified"].timestamp()))
        assets.sort(key=lambda info: (info.service, version_sort_key(info.version), info.version))
        return assets

    def _listing(self, name_prefix: str) -> Iterator[ObjectMeta]:
        """The objects whose keys start with `name_prefix`, in key order."""
        pages = self._reads.list(
            prefix=self._prefix or None, offset=name_prefix or None, chunk_size=1000
        )
        for page in pages:
            for meta in page:
                if not meta["path"].startswith(name_prefix):
                    return
                yield meta

    def stat(self, ref: AssetRef) -> AssetInfo | None:
        """The asset's info, or None if absent (a missing bucket too: see S3Store.stat)."""
        with self._translate_errors():
            try:
                # A HEAD request; unlike `head()`, this answer keeps the user metadata.
                result = self._reads.get(self.key_for(ref), options={"head": True})
            except (obstore_errors.NotFoundError, FileNotFoundError):
                return None
            meta = result.meta
        return AssetInfo(
            ref=ref,
            size=meta["size"],
            modified=meta["last_modified"].timestamp(),
            sha256=_sha256_of(result.attributes),
        )

    def open(self, ref: AssetRef) -> ObjectAssetStream:
        key = self.key_for(ref)
        where = f"s3://{self._bucket}/{key}"
        with self._translate_errors():
            try:
                result = self._reads.get(key)
            except (obstore_errors.NotFoundError, FileNotFoundError) as exc:
                if _s3_code(str(exc)) in (None, *NOT_FOUND_CODES):
                    raise AssetNotFoundError(f"{ref} is not in {self.url}") from exc
                raise
            meta = result.meta
            stream = result.stream(min_chunk_size=STREAM_CHUNK_BYTES)
        return ObjectAssetStream(
            stream, size=meta["size"], sha256=_sha256_of(result.attributes), where=where
        )

    def upload(
        self,
        source: Path,
        ref: AssetRef,
        *,
        sha256: str,
        overwrite: bool = False,
        progress: ProgressCallback | None = None,
    ) -> AssetInfo:
        return self._botocore().upload(
            source, ref, sha256=sha256, overwrite=overwrite, progress=progress
        )

    def delete(self, ref: AssetRef) -> None:
        self._botocore().delete(ref)

    def presign(self, ref: AssetRef, expiry_s: float) -> str:
        """A URL that GETs `ref` without credentials for `expiry_s`, as botocore's
        `generate_presigned_url` gives it: signed here, without a request to S3."""
        expires_in = timedelta(seconds=max(1, int(expiry_s)))
        with self._translate_errors():
            return sign(self._reads, "GET", self.key_for(ref), expires_in)

    def close(self) -> None:
        with self._writes_lock:
            if self._writes is not None:
                self._writes.close()

    def _botocore(self) -> S3Store:
        with self._writes_lock:
            if self._writes is None:
                from daybook.store.s3 import S3Store

                self._writes = S3Store(self._bucket, self._prefix, tuning=self._tuning)
            return self._writes

    @contextmanager
    def _translate_errors(self) -> Iterator[None]:
        try:
            yield
        except obstore_errors.BaseError as exc:
            raise self._store_error(exc) from exc
        except (OSError, RuntimeError, ValueError) as exc:
            # obstore raises built-in exceptions for some failures (a missing object is also
            # a FileNotFoundError): never let one through as a traceback.
            if isinstance(exc, DaybookError):
                raise
            raise self._store_error(exc) from exc

    def _store_error(self, exc: Exception) -> DaybookError:
        text = str(exc)
        code = _s3_code(text)
        if code is not None:
            message = _xml_field(text, "Message") or ""
            return error_for_code(
                code, message, url=self.url, bucket=self._bucket, endpoint=self._endpoint
            )
        summary = one_line(text.split("Debug source:", 1)[0])[:400]
        if "error sending request" in text or "timed out" in text or "Timeout" in text:
            return StoreUnavailableError(
                f"cannot reach S3 endpoint {self._endpoint} for {self.url}: {summary}"
            )
        return StoreError(
            f"S3 request for {self.url} (endpoint {self._endpoint}) failed: {summary}"
        )


class ObjectAssetStream:
    """The body of one GET, chunks streamed by obstore ahead of the reader."""

    def __init__(self, chunks: BytesStream, *, size: int, sha256: str | None, where: str) -> None:
        self._chunks = chunks
        self.size = size
        self.sha256 = sha256
        self._where = where
        self._pending = memoryview(b"")

    def read(self, size: int = -1, /) -> bytes:
        if size < 0:
            parts = [bytes(self._pending)]
            self._pending = memoryview(b"")
            while chunk := self._next_chunk():
                parts.append(bytes(chunk))
            return b"".join(parts)
        if not self._pending:
            chunk = self._next_chunk()
            if chunk is None:
                return b""
            self._pending = chunk
        piece, self._pending = self._pending[:size], self._pending[size:]
        return bytes(piece)

    def _next_chunk(self) -> memoryview | None:
        try:
            return memoryview(next(self._chunks))
        except StopIteration:
            return None
        except Exception as exc:
            # A transfer broken off (a dropped connection, a stalled server) can be retried.
            summary = one_line(str(exc).split("Debug source:", 1)[0])[:400]
            raise StoreUnavailableError(f"reading {self._where} failed: {summary}") from exc

    def close(self) -> None:
        self._pending = memoryview(b"")


def _client_options(tuning: S3Tuning, endpoint: str | None) -> ClientConfig:
    return {
        "connect_timeout": timedelta(seconds=tuning.connect_timeout_s),
        # Between two reads of a response, as botocore's read timeout; the whole request
        # may take as long as the transfer needs (object_store caps it at 30 s otherwise).
        "read_timeout": timedelta(seconds=tuning.read_timeout_s),
        "timeout": timedelta(days=1),
        "allow_http": endpoint is not None and endpoint.startswith("http://"),
        "user_agent": "daybook",
    }


def _retry_config(tuning: S3Tuning) -> RetryConfig:
    # botocore's standard mode: `max_attempts` in all, exponential backoff up to 20 s.
    return {
        "max_retries": max(0, tuning.max_attempts - 1),
        "backoff": {
            "init_backoff": timedelta(milliseconds=100),
            "max_backoff": timedelta(seconds=20),
            "base": 2,
        },
        "retry_timeout": timedelta(seconds=tuning.read_timeout_s),
    }


def _sha256_of(attributes: Mapping[str, object]) -> str | None:
    value = attributes.get(SHA256_METADATA_KEY)
    return value if isinstance(value, str) else None


def _s3_code(text: str) -> str | None:
    """S3's error code from obstore's message: the XML body's, else the HTTP status."""
    code = _xml_field(text, "Code")
    if code:
        return code
    status = _HTTP_STATUS.search(text)
    return status.group(1) if status else None


def _xml_field(text: str, name: str) -> str | None:
    for field_name, value in _XML_FIELD.findall(text):
        if field_name == name:
            return str(value)
    return None
