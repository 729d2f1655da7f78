"""One archive over plain HTTP(S) from a signed URL, resumed with a Range request after a
dropped connection. Its own module so the HTTP client and TLS load with a minion's first
download, never in an idle minion."""

from __future__ import annotations

import http.client
import random
import re
import ssl
from collections.abc import Callable
from urllib.parse import urlsplit

from daybook.backoff import backoff_s
from daybook.errors import AssetNotFoundError, StoreError, StoreUnavailableError
from daybook.store.signed import READ_TIMEOUT_S, sleep_s

# Waits the given seconds; False if the caller is stopping.
Pause = Callable[[float], bool]

# Resumptions of one transfer before the installer is left to start it again.
RESUME_ATTEMPTS = 3
RESUME_FIRST_DELAY_S = 0.2
RESUME_MAX_DELAY_S = 4.0
# Enough of an error body to read S3's code and message from.
MAX_ERROR_BODY_BYTES = 16 * 1024
_XML_FIELD = re.compile(r"<(Code|Message)>([^<]{0,300})</\1>")


class HttpAssetStream:
    """One archive over HTTP(S), resumed with a Range request after a dropped connection."""

    def __init__(
        self,
        url: str,
        *,
        size: int,
        sha256: str | None,
        timeout_s: float = READ_TIMEOUT_S,
        pause: Pause = sleep_s,
        resume_attempts: int = RESUME_ATTEMPTS,
        rng: random.Random | None = None,
    ) -> None:
        self.size = size
        self.sha256 = sha256
        self._url = url
        parts = urlsplit(url)
        # Never the query: it holds the signature and the key id.
        self.where = f"{parts.scheme}://{parts.netloc}{parts.path}"
        self._timeout_s = timeout_s
        self._pause = pause
        self._resume_attempts = resume_attempts
        self._rng = rng or random.Random()
        self._offset = 0
        self._resumed = 0
        self._connection: http.client.HTTPConnection | None = None
        self._response = self._get(0)

    def read(self, size: int = -1, /) -> bytes:
        while True:
            try:
                chunk = self._response.read(None if size < 0 else size)
            except (OSError, http.client.HTTPException) as exc:
                self._resume(exc)
                continue
            if not chunk and size != 0 and self._offset < self.size:
                self._resume(http.client.IncompleteRead(b"", self.size - self._offset))
                continue
            self._offset += len(chunk)
            return chunk

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def _resume(self, exc: Exception) -> None:
        self.close()
        self._resumed += 1
        if self._resumed > self._resume_attempts:
            raise StoreUnavailableError(f"reading {self.where} failed: {exc}") from exc
        delay_s = backoff_s(
            self._resumed, start_s=RESUME_FIRST_DELAY_S, max_s=RESUME_MAX_DELAY_S, rng=self._rng
        )
        if not self._pause(delay_s):
            raise StoreUnavailableError(f"reading {self.where} failed: {exc}") from exc
        try:
            self._response = self._get(self._offset)
        except StoreError as again:
            # Whatever stops a resumption (an URL expired meanwhile, too), a fresh start
            # with a fresh URL may get past.
            raise StoreUnavailableError(f"resuming {self.where} failed: {again}") from again

    def _get(self, offset: int) -> http.client.HTTPResponse:
        parts = urlsplit(self._url)
        connection: http.client.HTTPConnection
        if parts.scheme == "https":
            connection = http.client.HTTPSConnection(
                parts.netloc, timeout=self._timeout_s, context=ssl.create_default_context()
            )
        else:
            connection = http.client.HTTPConnection(parts.netloc, timeout=self._timeout_s)
        self._connection = connection
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        try:
            connection.request("GET", target, headers=headers)
            response = connection.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            raise StoreUnavailableError(f"cannot reach {self.where}: {exc}") from exc
        if response.status == (206 if offset else 200):
            return response
        try:
            body = response.read(MAX_ERROR_BODY_BYTES)
        except (OSError, http.client.HTTPException):
            body = b""
        self.close()
        raise self._refusal(response.status, body)

    def _refusal(self, status: int, body: bytes) -> StoreError:
        found = dict(_XML_FIELD.findall(body.decode("utf-8", errors="replace")))
        detail = ": ".join(found[k] for k in ("Code", "Message") if k in found) or "no detail"
        if status == 404:
            return AssetNotFoundError(f"{self.where} is not in the store (HTTP 404)")
        if status >= 500 or status == 429:
            return StoreUnavailableError(f"the store failed {self.where}: HTTP {status}: {detail}")
        # 403: a URL forged, altered or expired, or a signer without read rights.
        return StoreError(
            f"the store refused the download URL of {self.where}: HTTP {status}: {detail}"
        )
