"""Store and registry URLs taken apart safely: malformed URLs, file:// paths, S3 buckets."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import SplitResult, urlsplit

from daybook.errors import ConfigError


def split_url(url: str, what: str) -> SplitResult:
    """`url` taken apart, its port read: a malformed URL (an unclosed `[`, a port that is
    no number or past 65535) is a ConfigError naming `what`, never a ValueError."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - read for its ValueError on a bad port
    except ValueError as exc:
        raise ConfigError(f"{what} URL {url!r} is malformed: {exc}") from None
    return parts


def file_url_path(url: str, what: str) -> Path:
    """The absolute path `file:///PATH` names."""
    parts = split_url(url, what)
    if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
        raise ConfigError(f"{what} URL {url!r} is not file:///ABSOLUTE/PATH")
    return Path(parts.path)


def s3_bucket_and_prefix(url: str) -> tuple[str, str]:
    """The bucket and key prefix of `s3://BUCKET[/PREFIX]`."""
    parts = split_url(url, "store")
    if not parts.netloc:
        raise ConfigError(f"store URL {url!r} names no bucket: expected s3://BUCKET[/PREFIX]")
    return parts.netloc, parts.path.strip("/")
