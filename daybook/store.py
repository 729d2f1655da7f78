"""The Store protocol: where asset tarballs live, and `open_store(url)` to pick a backend."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import urlparse

from daybook.errors import ConfigError
from daybook.naming import AssetRef

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
    """An asset store. Implementations: `S3Store` and `LocalStore`."""

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

    def close(self) -> None: ...


def open_store(url: str) -> Store:
    """Open a store by URL: `s3://BUCKET[/PREFIX]` or `file:///DIR`."""
    parsed = urlparse(url)
    if parsed.scheme == "s3":
        from daybook.s3_store import S3Store  # boto3 is heavy: import it only when used

        if not parsed.netloc:
            raise ConfigError(f"store URL {url!r} names no bucket: expected s3://BUCKET[/PREFIX]")
        return S3Store(bucket=parsed.netloc, prefix=parsed.path.strip("/"))
    if parsed.scheme == "file":
        from daybook.local_store import LocalStore

        if parsed.netloc not in ("", "localhost") or not parsed.path:
            raise ConfigError(f"store URL {url!r} is not file:///ABSOLUTE/DIR")
        return LocalStore(Path(parsed.path))
    raise ConfigError(
        f"unsupported store URL {url!r}: expected s3://BUCKET[/PREFIX] or file:///DIR"
    )
