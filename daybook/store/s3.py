"""The S3 asset store: `NAME-VERSION.tar.gz` objects under a bucket prefix, through botocore."""

from __future__ import annotations

import logging
import os
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import botocore.session
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    CredentialRetrievalError,
    HTTPClientError,
    NoCredentialsError,
    PartialCredentialsError,
    ProfileNotFound,
    SSOError,
    TokenRetrievalError,
)
from botocore.exceptions import (
    ConnectionError as BotoConnectionError,
)
from botocore.utils import parse_timestamp

from daybook.errors import (
    AssetExistsError,
    AssetNotFoundError,
    ConfigError,
    DaybookError,
    InputError,
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

if TYPE_CHECKING:
    from boto3.s3.transfer import TransferConfig
    from botocore.config import _RetryDict as RetriesConfig
    from botocore.response import StreamingBody
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import PaginatorConfigTypeDef
    from s3transfer.futures import TransferFuture
    from s3transfer.subscribers import BaseSubscriber

log = logging.getLogger(__name__)

MIB = 1024 * 1024
CONTENT_TYPE = "application/gzip"
_PRECONDITION_CODES = frozenset({"412", "PreconditionFailed"})


def _parse_timestamp(value: str) -> datetime:
    """botocore's timestamp parser, with a fast path for the ISO 8601 times S3 lists.

    botocore parses every timestamp with dateutil: about 70 % of the CPU a listing of a
    hundred objects costs, and the master lists the store every few seconds.
    """
    try:
        parsed = datetime.fromisoformat(value)
    except (TypeError, ValueError):
        pass
    else:
        if parsed.tzinfo is not None:
            return parsed
    # HTTP dates (`Last-Modified` headers), epoch seconds, anything else: botocore's way.
    parsed_by_botocore: datetime = parse_timestamp(value)
    return parsed_by_botocore


class S3Store:
    """Assets as `s3://BUCKET/PREFIX/NAME-VERSION.tar.gz`, the archive's SHA-256 in metadata.

    Credentials come from the AWS chain, the endpoint from `AWS_ENDPOINT_URL[_S3]` or the AWS
    config file (botocore reads both), the region from `AWS_REGION`, `AWS_DEFAULT_REGION`, the
    profile, else us-east-1. A `client` passed in is used as is and not closed by `close()`.
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        client: S3Client | None = None,
        tuning: S3Tuning = S3Tuning(),  # frozen, so sharing one default is safe
    ) -> None:
        if not bucket:
            raise ConfigError("S3 store needs a bucket name")
        self._bucket = bucket
        self._prefix = prefix.strip("/")
        self._key_prefix = f"{self._prefix}/" if self._prefix else ""
        self._tuning = tuning
        self._owns_client = client is None
        self._client = client if client is not None else self._create_client(tuning)
        # Keys being uploaded with overwrite=False. s3transfer refuses `IfNoneMatch` in its
        # ExtraArgs, so a botocore hook adds it to the PutObject or CompleteMultipartUpload
        # call for these keys; parts run on transfer threads, so this cannot be thread-local.
        # Counted, not a set: concurrent uploads of one key each hold a claim until they end.
        # An overwrite of a key racing such an upload inherits the condition: the safe side.
        self._exclusive_keys: Counter[str] = Counter()
        self._exclusive_lock = threading.Lock()
        for operation in ("PutObject", "CompleteMultipartUpload"):
            self._client.meta.events.register(
                f"before-parameter-build.s3.{operation}",
                self._add_if_none_match,
                unique_id=f"daybook-if-none-match-{id(self)}-{operation}",
            )

    def _create_client(self, tuning: S3Tuning) -> S3Client:
        # botocore rather than boto3: `boto3.client` is a thin wrapper over this, and importing
        # boto3 also imports s3transfer, which only uploads need: about 30 ms of CPU saved on
        # every `daybook pull` and minion install. `upload` imports them when it runs.
        try:
            core = botocore.session.get_session()
            # Retries as the user configured them (AWS_RETRY_MODE, AWS_MAX_ATTEMPTS or the
            # profile), else ours: botocore fills in only what the client config leaves out.
            retries: RetriesConfig = {}
            if core.get_config_variable("retry_mode") is None:
                retries["mode"] = "standard"
            if core.get_config_variable("max_attempts") is None:
                retries["total_max_attempts"] = tuning.max_attempts
            config = Config(
                connect_timeout=tuning.connect_timeout_s,
                read_timeout=tuning.read_timeout_s,
                retries=retries,
                max_pool_connections=tuning.max_pool_connections,
                user_agent_extra="daybook",
                # Requests are SigV4 anyway; this makes the download URLs the master signs
                # SigV4 too (botocore presigns with the legacy SigV2 otherwise, which most
                # regions refuse), and caps their expiry at a week.
                signature_version="s3v4",
            )
            # botocore itself reads AWS_DEFAULT_REGION and the profile, but not AWS_REGION.
            region = (
                os.environ.get("AWS_REGION") or core.get_config_variable("region") or DEFAULT_REGION
            )
            core.get_component("response_parser_factory").set_parser_defaults(
                timestamp_parser=_parse_timestamp
            )
            # The stubs type botocore's clients generically; this one is an S3 client.
            return cast("S3Client", core.create_client("s3", region_name=region, config=config))
        except (ProfileNotFound, ValueError) as exc:
            # ValueError: botocore's verdict on a malformed AWS_ENDPOINT_URL.
            raise ConfigError(f"cannot set up S3 client for {self.url}: {one_line(exc)}") from exc

    @property
    def url(self) -> str:
        return f"s3://{self._bucket}/{self._prefix}" if self._prefix else f"s3://{self._bucket}"

    def key_for(self, ref: AssetRef) -> str:
        """The object key that holds `ref`."""
        return self._key_prefix + ref.filename

    def list_assets(self, service: str | None = None) -> list[AssetInfo]:
        list_prefix = self._key_prefix
        if service is not None:
            # The trailing dash keeps `svc_1` from matching `svc_10-...`.
            list_prefix += f"{check_service(service)}-"
        pagination: PaginatorConfigTypeDef = {}
        if self._tuning.list_page_size is not None:
            pagination["PageSize"] = self._tuning.list_page_size
        paginator = self._client.get_paginator("list_objects_v2")
        assets: list[AssetInfo] = []
        with self._translate_errors():
            for page in paginator.paginate(
                Bucket=self._bucket, Prefix=list_prefix, PaginationConfig=pagination
            ):
                for obj in page.get("Contents", []):
                    ref = asset_for_key(self._bucket, self._key_prefix, obj["Key"])
                    if ref is None or (service is not None and ref.service != service):
                        continue
                    assets.append(AssetInfo(ref, obj["Size"], obj["LastModified"].timestamp()))
        assets.sort(key=lambda info: (info.service, version_sort_key(info.version), info.version))
        return assets

    def stat(self, ref: AssetRef) -> AssetInfo | None:
        """The asset's info, or None if absent.

        A missing bucket also reads as None here: HEAD responses carry no error code to tell
        the two apart. Every other operation reports the missing bucket.
        """
        with self._translate_errors():
            try:
                head = self._client.head_object(Bucket=self._bucket, Key=self.key_for(ref))
            except ClientError as exc:
                if _error_code(exc) in NOT_FOUND_CODES:
                    return None
                raise
        return AssetInfo(
            ref=ref,
            size=head["ContentLength"],
            modified=head["LastModified"].timestamp(),
            sha256=head.get("Metadata", {}).get(SHA256_METADATA_KEY),
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
        """Upload `source` as `ref`.

        `progress` is called from s3transfer's worker threads, and with a negative count when
        a failed part is retried and its bytes are sent again.
        """
        key = self.key_for(ref)
        try:
            source.stat()
        except OSError as exc:
            raise InputError(f"cannot read {source}: {exc.strerror}") from exc
        # The HEAD gives a clear answer cheaply before any bytes move; the conditional write
        # below is what settles a race between two pushes of the same version.
        if not overwrite and self.stat(ref) is not None:
            raise AssetExistsError(f"{ref} already exists in {self.url}")
        from boto3.s3.transfer import create_transfer_manager  # only uploads need s3transfer

        extra_args = {"Metadata": {SHA256_METADATA_KEY: sha256}, "ContentType": CONTENT_TYPE}
        subscribers = [_progress_subscriber(progress)] if progress is not None else []
        if not overwrite:
            with self._exclusive_lock:
                self._exclusive_keys[key] += 1
        try:
            with self._translate_errors():
                try:
                    with create_transfer_manager(self._client, self._transfer_config()) as manager:
                        future = manager.upload(
                            str(source),
                            self._bucket,
                            key,
                            extra_args=extra_args,
                            subscribers=subscribers,
                        )
                        future.result()
                except ClientError as exc:
                    if _error_code(exc) in _PRECONDITION_CODES:
                        raise AssetExistsError(f"{ref} already exists in {self.url}") from exc
                    raise
        finally:
            if not overwrite:
                with self._exclusive_lock:
                    self._exclusive_keys -= Counter({key: 1})
        info = self.stat(ref)
        if info is None:
            raise StoreError(f"{ref} is missing from {self.url} right after its upload")
        return info

    def _transfer_config(self) -> TransferConfig:
        from boto3.s3.transfer import TransferConfig

        tuning = self._tuning
        return TransferConfig(
            multipart_threshold=tuning.multipart_threshold_bytes,
            multipart_chunksize=tuning.multipart_chunk_bytes,
            max_concurrency=tuning.max_concurrency,
            # The CRT transfer client bypasses botocore's event hooks, which the conditional
            # write in `upload` relies on.
            preferred_transfer_client="classic",
        )

    def open(self, ref: AssetRef) -> S3AssetStream:
        key = self.key_for(ref)
        with self._translate_errors():
            try:
                response = self._client.get_object(Bucket=self._bucket, Key=key)
            except ClientError as exc:
                if _error_code(exc) in NOT_FOUND_CODES:
                    raise AssetNotFoundError(f"{ref} is not in {self.url}") from exc
                raise
        return S3AssetStream(
            response["Body"],
            size=response["ContentLength"],
            sha256=response.get("Metadata", {}).get(SHA256_METADATA_KEY),
            where=f"s3://{self._bucket}/{key}",
        )

    def delete(self, ref: AssetRef) -> None:
        # S3 answers 204 whether or not the key existed; the SHA-256 is the object's own
        # metadata, so it goes with it.
        with self._translate_errors():
            self._client.delete_object(Bucket=self._bucket, Key=self.key_for(ref))

    def presign(self, ref: AssetRef, expiry_s: float) -> str:
        """A URL that GETs `ref` without credentials for `expiry_s`: signed here, with this
        store's credentials, without a request to S3."""
        with self._translate_errors():
            url: str = self._client.generate_presigned_url(
                "get_object",
                Params={"Bucket": self._bucket, "Key": self.key_for(ref)},
                ExpiresIn=max(1, int(expiry_s)),
            )
        return url

    def close(self) -> None:
        if self._owns_client:
            self._client.close()

    def _add_if_none_match(self, params: dict[str, Any], **kwargs: Any) -> None:
        if params.get("Bucket") != self._bucket:
            return
        with self._exclusive_lock:
            exclusive = self._exclusive_keys[params.get("Key", "")] > 0
        if exclusive:
            params["IfNoneMatch"] = "*"

    @contextmanager
    def _translate_errors(self) -> Iterator[None]:
        try:
            yield
        except (ClientError, BotoCoreError) as exc:
            raise self._store_error(exc) from exc

    def _store_error(self, exc: ClientError | BotoCoreError) -> DaybookError:
        """One line that names the bucket and endpoint; never credentials."""
        endpoint = self._client.meta.endpoint_url
        where = f"{self.url} (endpoint {endpoint})"
        if isinstance(exc, NoCredentialsError | PartialCredentialsError):
            return ConfigError(
                f"no AWS credentials found for {where}: set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY, or AWS_PROFILE, or configure another source in "
                f"the AWS credential chain ({one_line(exc)})"
            )
        if isinstance(exc, CredentialRetrievalError | TokenRetrievalError | SSOError):
            return ConfigError(f"cannot load AWS credentials for {where}: {one_line(exc)}")
        if isinstance(exc, BotoConnectionError | HTTPClientError):
            return StoreUnavailableError(
                f"cannot reach S3 endpoint {endpoint} for {self.url}: {one_line(exc)}"
            )
        if isinstance(exc, BotoCoreError):
            return StoreError(f"S3 request for {where} failed: {one_line(exc)}")
        message = exc.response.get("Error", {}).get("Message", "")
        return error_for_code(
            _error_code(exc), message, url=self.url, bucket=self._bucket, endpoint=endpoint
        )


class S3AssetStream:
    """The body of one GetObject; read errors surface as StoreUnavailableError."""

    def __init__(self, body: StreamingBody, *, size: int, sha256: str | None, where: str) -> None:
        self._body = body
        self.size = size
        self.sha256 = sha256
        self._where = where

    def read(self, size: int = -1, /) -> bytes:
        try:
            return self._body.read(None if size < 0 else size)
        except (BotoCoreError, OSError) as exc:
            # A transfer broken off (a dropped connection, a stalled server) can be retried.
            raise StoreUnavailableError(f"reading {self._where} failed: {one_line(exc)}") from exc

    def close(self) -> None:
        self._body.close()


def _progress_subscriber(progress: ProgressCallback) -> BaseSubscriber:
    """An s3transfer subscriber that reports bytes sent; built here so s3transfer loads late."""
    from s3transfer.subscribers import BaseSubscriber

    class ProgressSubscriber(BaseSubscriber):
        def on_progress(
            self, future: TransferFuture, bytes_transferred: int, **kwargs: Any
        ) -> None:
            progress(bytes_transferred)

    return ProgressSubscriber()


def _error_code(exc: ClientError) -> str:
    error = exc.response.get("Error", {})
    code = error.get("Code")
    if code:
        return str(code)
    return str(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", "unknown"))
