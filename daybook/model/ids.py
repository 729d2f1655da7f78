"""Identifiers and digests: sync, report and request ids, and the digests that name states."""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable

DIGEST_BYTES = 16
_DIGEST_RE = re.compile(rf"[0-9a-f]{{{DIGEST_BYTES * 2}}}")
_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")


def is_valid_id(text: str) -> bool:
    return _ID_RE.fullmatch(text) is not None


def is_valid_digest(text: str) -> bool:
    return _DIGEST_RE.fullmatch(text) is not None


def new_id() -> str:
    """128 random bits in hex, as a uuid4 carries, without importing uuid (and platform)."""
    return os.urandom(16).hex()


def blob_digest(blob: bytes) -> str:
    return hashlib.blake2b(blob, digest_size=DIGEST_BYTES).hexdigest()


def versions_digest(versions: Iterable[str]) -> str:
    """A short, order-independent digest of one service's set of versions.

    The master computes it from the store listing, a minion from what it installed; equal
    digests mean a minion has nothing to fetch for that service.
    """
    return blob_digest("\n".join(sorted(set(versions))).encode())


EMPTY_DIGEST = versions_digest(())
