"""Store and registry URLs taken apart safely: malformed URLs, file:// paths, S3 buckets."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import SplitResult, unquote, urlsplit

from daybook.errors import ConfigError

# AWS names new general purpose buckets with 3-63 lowercase letters, digits, dots and
# hyphens, beginning and ending with a letter or digit. botocore, which sends our requests,
# also accepts up to 255 characters, upper case and underscores: the legacy names older
# us-east-1 buckets still carry and some S3-compatible servers allow. So those pass, and
# the server judges them; anything else (a space, `[`, `%`) no request can carry, and
# obstore panics on it rather than failing.
_BUCKET_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{1,253}[A-Za-z0-9]")
_BUCKET_RULE = (
    "3-255 letters, digits, dots, hyphens or underscores, beginning and ending with a "
    "letter or digit"
)


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
    """The absolute path `file:///PATH` names, its percent-escapes decoded (`%23` is `#`),
    as `Path.as_uri()` writes them."""
    parts = split_url(url, what)
    if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
        raise ConfigError(f"{what} URL {url!r} is not file:///ABSOLUTE/PATH")
    # Unescaped, they start a query or a fragment, and the path would silently end there.
    if "?" in url or "#" in url:
        raise ConfigError(f"{what} URL {url!r}: write a `?` or `#` in the path as %3F or %23")
    return Path(unquote(parts.path))


def s3_bucket_and_prefix(url: str) -> tuple[str, str]:
    """The bucket and key prefix of `s3://BUCKET[/PREFIX]`."""
    parts = split_url(url, "store")
    if not parts.netloc:
        raise ConfigError(f"store URL {url!r} names no bucket: expected s3://BUCKET[/PREFIX]")
    if "?" in url or "#" in url:
        raise ConfigError(f"store URL {url!r}: a `?` or `#` has no place in s3://BUCKET/PREFIX")
    if _BUCKET_RE.fullmatch(parts.netloc) is None:
        raise ConfigError(
            f"store URL {url!r}: {parts.netloc!r} is not an S3 bucket name ({_BUCKET_RULE})"
        )
    prefix = parts.path.strip("/")
    if prefix and any(segment in ("", ".", "..") for segment in prefix.split("/")):
        raise ConfigError(
            f"store URL {url!r}: the key prefix {prefix!r} has an empty, `.` or `..` segment"
        )
    return parts.netloc, prefix


def check_endpoint_url(url: str, variable: str) -> str:
    """`url` if it is an http(s) endpoint with a host (and a port that is one): what an S3
    client can be pointed at. obstore panics on anything else, mid-request."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"{variable}={url!r} is malformed: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{variable}={url!r} is not an http:// or https:// URL with a host")
    if port == 0:
        raise ConfigError(f"{variable}={url!r}: 0 is not a port (1-65535)")
    return url
