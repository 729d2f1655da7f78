"""The Store protocol: where asset tarballs live, and `open_store(url)` to pick a backend."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from daybook.errors import ConfigError
from daybook.model.names import AssetRef
from daybook.urls import file_url_path, s3_bucket_and_prefix, split_url

# Called with the number of bytes moved since the last call.
ProgressCallback = Callable[[int], None]


@dataclass(frozen=True)
class AssetInfo:
    """One asset as the store lists it."""

    ref: AssetRef
    size: int
    # Seconds since the epoch, as reported by the store.
    modified: float
    # Hex SHA-256 of the archive bytes, when the store recorded one at push time.
    sha256: str | None = None

    @property
    def service(self) -> str:
        return self.ref.service

    @property
    def version(self) -> str:
        return self.ref.version


class AssetStream(Protocol):
    """A readable stream of one archive's bytes, with what the store knows about it."""

    size: int
    sha256: str | None

    def read(self, size: int = -1, /) -> bytes: ...

    def close(self) -> None: ...


class Store(Protocol):
    """An asset store. Implementations: `S3Store` (botocore), `S3ReadsStore` (its reads
    through obstore) and `LocalStore`."""

    @property
    def url(self) -> str: ...

    def list_assets(self, service: str | None = None) -> list[AssetInfo]:
        """Every valid asset (of one service, if given), sorted by service then version.

        Objects whose names are not assets are skipped with a warning, never an error.
        """
        ...

    def stat(self, ref: AssetRef) -> AssetInfo | None:
        """The asset's info, or None if the store does not hold it."""
        ...

    def upload(
        self,
        source: Path,
        ref: AssetRef,
        *,
        sha256: str,
        overwrite: bool = False,
        progress: ProgressCallback | None = None,
    ) -> AssetInfo:
        """Store `source` as `ref`; raise AssetExistsError if present and not `overwrite`."""
        ...

    def open(self, ref: AssetRef) -> AssetStream:
        """Stream the archive; raise AssetNotFoundError if it is missing."""
        ...

    def delete(self, ref: AssetRef) -> None:
        """Remove the asset (and its recorded SHA-256). Removing one the store does not
        hold is no error: two prunes racing both succeed."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class Presigner(Protocol):
    """A store that can hand out URLs to read an asset without its credentials (S3)."""

    def presign(self, ref: AssetRef, expiry_s: float) -> str:
        """A URL that GETs `ref` for `expiry_s` seconds."""
        ...


def open_store(url: str, *, lazy: bool = False) -> Store:
    """Open a store by URL: `s3://BUCKET[/PREFIX]` or `file:///DIR`.

    With `lazy`, an S3 store is only checked now and opened on first use (see LazyStore).
    """
    scheme = split_url(url, "store").scheme
    if scheme == "s3":
        bucket, prefix = s3_bucket_and_prefix(url)
        if lazy:
            return LazyStore(url)
        return _open_s3(bucket, prefix)
    if scheme == "file":
        from daybook.store.local import LocalStore

        return LocalStore(file_url_path(url, "store"))
    raise ConfigError(
        f"unsupported store URL {url!r}: expected s3://BUCKET[/PREFIX] or file:///DIR"
    )


def _open_s3(bucket: str, prefix: str) -> Store:
    """Reads and signed URLs through obstore where the environment settles the AWS chain,
    else botocore for everything (see daybook/store/s3_reads.py). Both import only when
    used."""
    from daybook.store.s3_reads import S3ReadsStore, reads_config_from_environment

    config = reads_config_from_environment()
    if config is not None:
        return S3ReadsStore(bucket, prefix, config=config)
    from daybook.store.s3 import S3Store

    return S3Store(bucket=bucket, prefix=prefix)


class LazyStore:
    """A store opened on its first use.

    For processes that may never need it: a minion whose syncs are all no-ops never
    downloads, and botocore and an S3 client cost it about 0.2 s of CPU at start and 35 MiB.
    Errors opening the store surface at that first use, where callers already handle
    store errors.
    """

    def __init__(self, url: str) -> None:
        self._url = url
        self._store: Store | None = None
        # Syncs may run on several threads (minions sharing a process); only one opens it.
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return self._url

    @property
    def opened(self) -> bool:
        return self._store is not None

    def _open(self) -> Store:
        with self._lock:
            if self._store is None:
                self._store = open_store(self._url)
            return self._store

    def list_assets(self, service: str | None = None) -> list[AssetInfo]:
        return self._open().list_assets(service)

    def stat(self, ref: AssetRef) -> AssetInfo | None:
        return self._open().stat(ref)

    def upload(
        self,
        source: Path,
        ref: AssetRef,
        *,
        sha256: str,
        overwrite: bool = False,
        progress: ProgressCallback | None = None,
    ) -> AssetInfo:
        return self._open().upload(
            source, ref, sha256=sha256, overwrite=overwrite, progress=progress
        )

    def open(self, ref: AssetRef) -> AssetStream:
        return self._open().open(ref)

    def delete(self, ref: AssetRef) -> None:
        self._open().delete(ref)

    def close(self) -> None:
        with self._lock:
            if self._store is not None:
                self._store.close()
