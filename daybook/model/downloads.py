"""Signed downloads: what the master hands a minion for each version it may download.

A minion without store credentials asks the master, over its authenticated control link,
for the versions of one service; the master answers from its own listing of the store, and
signs a short-lived URL for each version the minion names to download.
"""

from __future__ import annotations

import re

from daybook.model.names import AssetRef, is_valid_service, is_valid_version
from daybook.model.rules import checked, record

# A presigned S3 URL with its query string: a few hundred characters, more with a session
# token; anything longer is refused off the wire.
MAX_URL_LEN = 8192
MAX_ASSET_BYTES = float(2**50)
_SHA256_RE = re.compile(r"[0-9a-f]{64}")


def is_sha256(text: str) -> bool:
    return _SHA256_RE.fullmatch(text) is not None


def is_download_url(text: str) -> bool:
    """An absolute http(s) URL with no whitespace: what an installer may fetch."""
    return text.startswith(("https://", "http://")) and not any(c.isspace() for c in text)


@record
class Download:
    """One version as the master lists it: its size and SHA-256 from the master's listing,
    and, when the minion asked to download it, a URL valid until `expires_at`."""

    service: str = checked(is_valid_service)
    version: str = checked(is_valid_version)
    size: int = checked(minimum=0, maximum=MAX_ASSET_BYTES)
    sha256: str | None = checked(is_sha256)
    url: str | None = checked(is_download_url, max_len=MAX_URL_LEN, default=None, repr=False)
    expires_at: float = 0.0

    @property
    def ref(self) -> AssetRef:
        return AssetRef(self.service, self.version)
