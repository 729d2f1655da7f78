"""The extraction safety rules: which members of an archive may be written, and why.

An asset comes from a store that anyone with push rights fills, and a host installs it as
the minion's user, so an archive is untrusted input. These rules decide, member by member,
whether writing it could reach outside the destination directory or create something an
asset has no business creating; `daybook.install.extract` parses the tar, asks, and writes
only what is admitted. Nothing here does I/O: the rules are pure, and tested on their own.
"""

from __future__ import annotations

import os
from typing import NamedTuple

from daybook.errors import ExtractError

# Linux limits; checked here so `daybook push` refuses what no host could install.
MAX_NAME_BYTES = 255
MAX_PATH_BYTES = 4095

# setuid, setgid and sticky bits are dropped: an asset has no business setting them.
MODE_MASK = 0o777

# What a member makes. HARDLINK exists only while judging: a hard link ends up a FILE.
DIR = "d"
FILE = "f"
LINK = "l"
HARDLINK = "h"

# Tar member types never written, by the type flag's byte value. Devices and FIFOs have no
# place in an application's tree (a device node would hand its readers the device); sparse
# files would need their map of holes parsed from untrusted input, and no asset needs one.
REFUSED_TYPES = {
    ord("3"): "character devices are not allowed",
    ord("4"): "block devices are not allowed",
    ord("6"): "FIFOs are not allowed",
    ord("S"): "sparse files are not supported",
}
# pax records that turn a regular member into a sparse file (GNU's pax encodings).
_SPARSE_PAX_PREFIX = "GNU.sparse."


def unsafe(name: str, reason: str) -> ExtractError:
    """The error for a refused member, naming it as the archive does."""
    return ExtractError(f"unsafe member {name!r}: {reason}")


def refused_type(name: str, typeflag: int) -> ExtractError:
    """The error for a member whose tar type is none that `Tree.admit` judges."""
    reason = REFUSED_TYPES.get(typeflag) or f"unsupported member type {chr(typeflag)!r}"
    return unsafe(name, reason)


def check_pax_records(name: str, records: dict[str, str]) -> None:
    """Refuse the pax records of a member that would make it something other than it says."""
    if any(key.startswith(_SPARSE_PAX_PREFIX) for key in records):
        raise unsafe(name, "sparse files are not supported")


class Verdict(NamedTuple):
    """How to write a member that `Tree.admit` found safe."""

    # Normalised path relative to the root; "" for the root itself, which is skipped.
    path: str
    # Directories to create first, outermost first.
    parents: list[str]
    # An earlier file or symlink at `path` that must be removed first (never written through).
    replaces: bool
    # For hard links: the normalised path of the file to link to.
    target: str


class Tree:
    """Everything the archive has put under the root so far; judges each member against it.

    This is the one place that decides whether a member is safe. The rules, each a way an
    archive could otherwise write outside the root:

    - no absolute path and no `..` component;
    - no path through a symlink or a file the archive made earlier;
    - a symlink's target is relative, and any `..` components lead it, no deeper than the
      link's own directory (a `..` after a name could cancel a symlink that points elsewhere,
      including one the archive only adds later);
    - a hard link only to a regular file already extracted;
    - a directory never replaces a non-directory, nor the other way round.
    """

    def __init__(self) -> None:
        self._kinds: dict[str, str] = {}
        self.directories = 0

    def admit(self, kind: str, name: str, link: str) -> Verdict:
        """Judge one member and record it; raise ExtractError naming it and the reason."""
        path = normalise(name, name)
        if not path:
            if kind == DIR:
                return Verdict("", [], False, "")
            raise unsafe(name, "it names the destination directory itself")
        kinds = self._kinds
        parent = path.rpartition("/")[0]
        parents = self._parents(name, parent) if parent and kinds.get(parent) != DIR else []
        existing = kinds.get(path)
        if kind == DIR:
            if existing is None:
                kinds[path] = DIR
                parents.append(path)
                self.directories += 1
            elif existing != DIR:
                raise unsafe(name, "a non-directory of that name was extracted earlier")
            return Verdict(path, parents, False, "")
        if existing == DIR:
            raise unsafe(name, "a directory of that name was extracted earlier")
        target = ""
        if kind == LINK:
            check_symlink_target(name, path, link)
        elif kind == HARDLINK:
            target = normalise(name, link)
            if kinds.get(target) != FILE:
                raise unsafe(
                    name, f"hard link target {link!r} is not a regular file extracted earlier"
                )
        kinds[path] = LINK if kind == LINK else FILE
        return Verdict(path, parents, existing is not None, target)

    def _parents(self, name: str, parent: str) -> list[str]:
        """The missing directories above a member, after checking none of them is a link."""
        kinds = self._kinds
        missing = []
        prefix = ""
        for part in parent.split("/"):
            prefix = f"{prefix}/{part}" if prefix else part
            existing = kinds.get(prefix)
            if existing is None:
                kinds[prefix] = DIR
                missing.append(prefix)
                self.directories += 1
            elif existing == LINK:
                raise unsafe(name, f"its path goes through the symlink {prefix!r}")
            elif existing == FILE:
                raise unsafe(name, f"its path goes through the file {prefix!r}")
        return missing


def normalise(name: str, path: str) -> str:
    """`path` relative to the root, without `.` or empty components; refuse what escapes.

    `name` is the member's, for the error.
    """
    # Most paths are normal already, and this runs for every member. Without a leading `/`
    # or `.`, a trailing `/`, a `//` or a `/.`, no component is empty, `.` or `..`; and 63
    # characters are at most 252 bytes, inside every length limit.
    if (
        path
        and len(path) <= MAX_NAME_BYTES // 4
        and path[0] not in "./"
        and path[-1] != "/"
        and "//" not in path
        and "/." not in path
    ):
        return path
    if path.startswith("/"):
        raise unsafe(name, "absolute paths are not allowed")
    parts = [part for part in path.split("/") if part and part != "."]
    if ".." in parts:
        raise unsafe(name, "'..' is not allowed in paths")
    normal = "/".join(parts)
    # A character encodes to at most 4 bytes, so only long paths can break a length limit.
    if len(normal) > MAX_NAME_BYTES // 4:
        encoded = os.fsencode(normal)
        if len(encoded) > MAX_PATH_BYTES or any(
            len(part) > MAX_NAME_BYTES for part in encoded.split(b"/")
        ):
            raise unsafe(name, "the path is too long")
    return normal


def check_symlink_target(name: str, path: str, target: str) -> None:
    """Refuse a symlink at `path` whose `target` could lead outside the root."""
    if not target:
        raise unsafe(name, "the symlink target is empty")
    if target.startswith("/"):
        raise unsafe(name, f"symlink target {target!r} is absolute")
    depth = path.count("/")
    ups = 0
    named = False
    for part in target.split("/"):
        if part == "..":
            if named:
                raise unsafe(name, f"symlink target {target!r} has '..' after a name")
            ups += 1
            if ups > depth:
                raise unsafe(name, f"symlink target {target!r} points outside the archive")
        elif part and part != ".":
            named = True
