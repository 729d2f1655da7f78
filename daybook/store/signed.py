"""A read-only store for minions without credentials: versions listed by the master, archives
fetched over plain HTTP(S) from the short-lived URLs it signs.

Lean on purpose (stdlib `http.client`, no botocore): it runs in every minion, which then
needs neither credentials nor an S3 client. The SHA-256 each archive is checked against is
the one the master listed, never one that comes with the download. A transfer broken off
resumes with a Range request where it stopped, after a jittered backoff (daybook/store/
http_stream.py); when that fails too, the installer starts the version again from scratch,
with a fresh URL.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from daybook.errors import (
    AssetNotFoundError,
    StoreError,
)
from daybook.model.downloads import Download
from daybook.model.names import AssetRef, check_service
from daybook.store.base import AssetInfo, ProgressCallback

if TYPE_CHECKING:
    from daybook.store.http_stream import HttpAssetStream

# The master's answer for one service: every version it lists, signed where asked.
# Raises StoreUnavailableError when the master may answer later, StoreError when it refused.
AskMaster = Callable[[str, tuple[str, ...]], tuple[Download, ...]]
READ_TIMEOUT_S = 60.0


def sleep_s(seconds: float) -> bool:
    time.sleep(seconds)
    return True


class SignedStore:
    """The `Store` a minion reads when the master signs its downloads."""

    def __init__(
        self,
        url: str,
        ask: AskMaster,
        *,
        timeout_s: float = READ_TIMEOUT_S,
        pause: Callable[[float], bool] = sleep_s,
    ) -> None:
        self._url = url
        self._ask = ask
        self._timeout_s = timeout_s
        self._pause = pause

    @property
    def url(self) -> str:
        return self._url

    def list_assets(self, service: str | None = None) -> list[AssetInfo]:
        if service is None:
            raise StoreError("a minion lists one service at a time, through its master")
        listed = self._ask(check_service(service), ())
        return [AssetInfo(d.ref, d.size, 0.0, d.sha256) for d in listed if d.service == service]

    def stat(self, ref: AssetRef) -> AssetInfo | None:
        found = [a for a in self.list_assets(ref.service) if a.ref == ref]
        return found[0] if found else None

    def upload(
        self,
        source: Path,
        ref: AssetRef,
        *,
        sha256: str,
        overwrite: bool = False,
        progress: ProgressCallback | None = None,
    ) -> AssetInfo:
        raise StoreError(f"{self._url} is read-only through the master's signed URLs")

    def delete(self, ref: AssetRef) -> None:
        raise StoreError(f"{self._url} is read-only through the master's signed URLs")

    def open(self, ref: AssetRef) -> HttpAssetStream:
        # Here, not at the top: an idle minion never holds the HTTP client and TLS (2 MiB).
        from daybook.store.http_stream import HttpAssetStream

        """Ask the master for a URL of `ref` (its answer carries size and SHA-256), then GET it."""
        signed = [d for d in self._ask(ref.service, (ref.version,)) if d.ref == ref]
        if not signed or signed[0].url is None:
            raise AssetNotFoundError(f"the master sent no download URL for {ref}")
        download = signed[0]
        assert download.url is not None
        return HttpAssetStream(
            download.url,
            size=download.size,
            sha256=download.sha256,
            timeout_s=self._timeout_s,
            pause=self._pause,
        )

    def close(self) -> None:
        pass
