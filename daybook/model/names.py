"""Asset names: `NAME-VERSION.tar.gz`, and the validation rules for services and versions."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from daybook.errors import InputError

ASSET_SUFFIX = ".tar.gz"

# NAME has no dot and no dash, so the first dash always separates NAME from VERSION, and a
# VERSION can never be `.` or `..` or start with a dot: it is always a safe path component.
_SERVICE_RE = re.compile(r"[A-Za-z0-9_]+")
_VERSION_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.]*")
_ASSET_RE = re.compile(r"(?P<name>[A-Za-z0-9_]+)-(?P<version>[A-Za-z0-9_][A-Za-z0-9_.]*)\.tar\.gz")

# Long enough for any real name, short enough that a path built from them stays sane.
MAX_NAME_LEN = 128

# The name of the link each host keeps to the version that should run (the release
# lifecycle's, see model/releases.py). It stays a valid version, so a store holding one
# pushed before the rule still lists it, but nothing is pushed or pinned under it any more:
# such a version could never be activated.
CURRENT_LINK = "current"


def is_valid_service(name: str) -> bool:
    return len(name) <= MAX_NAME_LEN and _SERVICE_RE.fullmatch(name) is not None


def is_valid_version(version: str) -> bool:
    return len(version) <= MAX_NAME_LEN and _VERSION_RE.fullmatch(version) is not None


def check_service(name: str) -> str:
    """Return `name` if it is a valid service name, else raise InputError naming it."""
    if not is_valid_service(name):
        raise InputError(
            f"invalid service name {name!r}: use letters, digits and underscores "
            f"(at most {MAX_NAME_LEN})"
        )
    return name


def check_version(version: str) -> str:
    if not is_valid_version(version):
        raise InputError(
            f"invalid version {version!r}: use letters, digits, underscores and dots, "
            f"not starting with a dot (at most {MAX_NAME_LEN})"
        )
    return version


def check_release_version(version: str) -> str:
    """Return `version` if a version may be pushed or pinned under it, else raise."""
    check_version(version)
    if version == CURRENT_LINK:
        raise InputError(
            f"version {CURRENT_LINK!r} is reserved: it is the name of the link to the version "
            "that should run; use another version"
        )
    return version


@dataclass(frozen=True, order=True)
class AssetRef:
    """One version of one service, as named in the store."""

    service: str
    version: str

    def __post_init__(self) -> None:
        check_service(self.service)
        check_version(self.version)

    @property
    def filename(self) -> str:
        return f"{self.service}-{self.version}{ASSET_SUFFIX}"

    def __str__(self) -> str:
        return f"{self.service} {self.version}"


def parse_asset_filename(filename: str) -> AssetRef | None:
    """Parse `NAME-VERSION.tar.gz`; None when the name is not an asset."""
    match = _ASSET_RE.fullmatch(filename)
    if match is None:
        return None
    name, version = match["name"], match["version"]
    if len(name) > MAX_NAME_LEN or len(version) > MAX_NAME_LEN:
        return None
    return AssetRef(name, version)


def check_asset_filename(filename: str) -> AssetRef:
    ref = parse_asset_filename(filename)
    if ref is None:
        raise InputError(
            f"{filename!r} is not an asset name: expected NAME-VERSION.tar.gz, NAME of letters, "
            "digits and underscores, VERSION of letters, digits, underscores and dots"
        )
    return ref


def version_sort_key(version: str) -> tuple[tuple[int, int | str], ...]:
    """Order versions naturally: 1.9 < 1.10, numbers before words within a component."""
    parts: list[tuple[int, int | str]] = []
    for chunk in re.split(r"[._]", version):
        for piece in re.findall(r"\d+|[A-Za-z]+", chunk):
            parts.append((0, int(piece)) if piece.isdigit() else (1, piece))
    return tuple(parts)


def sorted_versions(versions: Iterable[str]) -> list[str]:
    """Versions oldest first, in `version_sort_key` order (ties by text)."""
    return sorted(versions, key=lambda v: (version_sort_key(v), v))
