"""Streaming, hash-checked extraction of gzip tar archives, and the same checks dry.

This module reads, inflates and parses the archive and writes the members; whether a
member may be written at all is decided by the rules in `daybook.install.safety`.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import queue
import re
import threading
import zlib
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, cast

from daybook.errors import ExtractError, IntegrityError
from daybook.install.safety import (
    DIR,
    FILE,
    HARDLINK,
    LINK,
    MODE_MASK,
    Tree,
    Verdict,
    check_pax_records,
    refused_type,
)


class _Gunzipper(Protocol):
    """The part of a zlib or isal decompress object that inflating gzip needs."""

    @property
    def eof(self) -> bool: ...

    @property
    def unused_data(self) -> bytes: ...

    @property
    def unconsumed_tail(self) -> bytes: ...

    def decompress(self, data: bytes, max_length: int = 0, /) -> bytes: ...


# wbits=31: a gzip header and trailer around the deflate data.
_new_gunzipper: Callable[[], _Gunzipper]
try:
    from isal import isal_zlib

    # About twice as fast as zlib at inflating; like zlib it releases the GIL while it works.
    _new_gunzipper = functools.partial(isal_zlib.decompressobj, wbits=31)
    # The stub declares `error` as an instance; at run time it is the exception class.
    _INFLATE_ERRORS: tuple[type[Exception], ...] = (
        zlib.error,
        cast("type[Exception]", isal_zlib.error),
    )
except ImportError:  # pragma: no cover - platforms without isal wheels
    _new_gunzipper = functools.partial(zlib.decompressobj, wbits=31)
    _INFLATE_ERRORS = (zlib.error,)

__all__ = ["ArchiveSummary", "ExtractStats", "Readable", "check_archive", "safe_extract"]

# Measured against 1 MiB, whole chunks of the S3 stream: with the heap kept as a pull keeps
# it (daybook.cmalloc), extracting the bench's 20,000-file asset took 426 against 427 ms
# (fresh processes, ext4), and a pull of its 200 MB asset 613 against 631 ms.
DEFAULT_CHUNK_SIZE = 256 * 1024
# Inflated bytes handed over per step. Bounding it bounds memory however well the data
# compresses (a gzip bomb inflates 1000:1).
_INFLATE_STEP = 1024 * 1024
# Chunks buffered between two stages of the pipeline (read chunks waiting for the inflater,
# inflated steps waiting for the writer).
_QUEUE_DEPTH = 8
_GZIP_MAGIC = b"\x1f\x8b"

_BLOCK = 512
_ZERO_BLOCK = bytes(_BLOCK)
# pax and GNU long-name payloads are held in memory; real ones are a few hundred bytes.
_MAX_META_BYTES = 1024 * 1024

# Type flags, as the integer value of the header byte.
_REGULAR_TYPES = frozenset(b"0\x007")  # regular, old-style regular, contiguous
_HARDLINK_TYPE = ord("1")
_SYMLINK_TYPE = ord("2")
_DIRECTORY_TYPE = ord("5")
_LINK_TYPES = frozenset((_SYMLINK_TYPE, _HARDLINK_TYPE))
_PAX_TYPES = frozenset(b"xX")  # POSIX extended header; X is Solaris' older spelling
_PAX_GLOBAL_TYPE = ord("g")
_GNU_LONG_NAME_TYPE = ord("L")
_GNU_LONG_LINK_TYPE = ord("K")
# Headers that describe the member after them rather than being one.
_EXTENSION_TYPES = _PAX_TYPES | {_PAX_GLOBAL_TYPE, _GNU_LONG_NAME_TYPE, _GNU_LONG_LINK_TYPE}

_POSIX_MAGIC = b"ustar\x0000"
# What os.utime accepts (a signed 64-bit count of nanoseconds).
_MIN_TIME_NS = -(2**63)
_MAX_TIME_NS = 2**63 - 1
# Directories stay owner-writable until every member is in; their own modes come last.
_BUILD_DIR_MODE = 0o700
# Mode for directories the archive implies but does not list.
_IMPLIED_DIR_MODE = 0o755
# O_EXCL also refuses to follow a symlink at the final component; O_NOFOLLOW says so twice.
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class Readable(Protocol):
    """A binary stream: an open file, an HTTP body, a store's `AssetStream`."""

    def read(self, size: int, /) -> bytes: ...


@dataclass(frozen=True)
class ExtractStats:
    """What `safe_extract` wrote. A member listed twice counts twice."""

    # Regular files and hard links.
    files: int
    # Including the parents an archive implies without listing them.
    directories: int
    symlinks: int
    # Bytes of regular-file data written (the archive's unpacked size; hard links add none).
    bytes_written: int
    compressed_bytes: int
    sha256: str


@dataclass(frozen=True)
class ArchiveSummary:
    """What `check_archive` found in an archive that passed every check."""

    # Entries that create something (the root entry `./` does not).
    members: int
    # Bytes of regular-file data.
    unpacked_bytes: int
    compressed_bytes: int
    sha256: str


def safe_extract(
    stream: Readable,
    dest: Path,
    *,
    expected_sha256: str | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> ExtractStats:
    """Unpack the gzip tar read from `stream` into the empty directory `dest`.

    The archive is read once, in `chunk_size` pieces, and never held whole: it is hashed
    and inflated on a background thread while this one writes the members. Nothing is
    written outside `dest`. Nothing is fsynced either: the caller decides what durability
    it needs. On any error `dest` holds an unspecified part of the archive, and the caller
    must discard it.

    Raises ExtractError for an unsafe member (naming it and why), a corrupt or truncated
    archive, or data that is not a gzip tar; IntegrityError (a subclass) when the archive's
    SHA-256 is not `expected_sha256`. Errors from the stream and from the file system
    (a full disk) propagate as they are.
    """
    with os.scandir(dest) as entries:
        if any(entries):
            raise ValueError(f"{dest} is not empty")
    tally = _Tally()
    with _pipeline(stream, chunk_size, tally) as inflated:
        counts = _unpack(_TarReader(inflated), _DiskWriter(dest))
    actual = tally.digest.hexdigest()
    if expected_sha256 is not None and expected_sha256.lower() != actual:
        raise IntegrityError(
            f"archive SHA-256 mismatch: expected {expected_sha256[:12]}..., got {actual[:12]}..."
        )
    return ExtractStats(
        files=counts.files,
        directories=counts.directories,
        symlinks=counts.symlinks,
        bytes_written=counts.file_bytes,
        compressed_bytes=tally.compressed_bytes,
        sha256=actual,
    )


def check_archive(path: Path) -> ArchiveSummary:
    """Read the gzip tar at `path` through and apply every `safe_extract` check, writing nothing.

    Raises ExtractError with the messages `safe_extract` would give, and OSError if the file
    cannot be read.
    """
    tally = _Tally()
    with path.open("rb") as file, _pipeline(file, DEFAULT_CHUNK_SIZE, tally) as inflated:
        counts = _unpack(_TarReader(inflated), _NullWriter())
    return ArchiveSummary(
        members=counts.members,
        unpacked_bytes=counts.file_bytes,
        compressed_bytes=tally.compressed_bytes,
        sha256=tally.digest.hexdigest(),
    )


# -- gzip --------------------------------------------------------------------------------------


class _Tally:
    """What passed through the inflater: the compressed bytes' count and running hash."""

    def __init__(self) -> None:
        self.digest = hashlib.sha256()
        self.compressed_bytes = 0


@contextlib.contextmanager
def _pipeline(stream: Readable, chunk_size: int, tally: _Tally) -> Iterator[Iterable[bytes]]:
    """The inflated bytes of `stream`, read and hashed on one thread and inflated on another.

    Three stages, so that reading the network and hashing (about a sixth of the work on a
    large archive) overlap with inflating, and inflating with writing files. On leaving,
    both threads are stopped and joined, whatever happened.
    """
    compressed = _Prefetcher(_read_hashed(stream, chunk_size, tally), "daybook-read")
    try:
        inflated = _Prefetcher(_inflate(compressed), "daybook-inflate")
        try:
            yield inflated
        finally:
            inflated.close()
    finally:
        compressed.close()


def _read_hashed(stream: Readable, chunk_size: int, tally: _Tally) -> Generator[bytes, None, None]:
    """Yield the stream's bytes, counting and hashing each chunk before it goes on."""
    while data := stream.read(chunk_size):
        tally.digest.update(data)
        tally.compressed_bytes += len(data)
        yield data


def _inflate(chunks: Iterable[bytes]) -> Generator[bytes, None, None]:
    """Yield the inflated bytes of a gzip stream, checking every member's CRC and length.

    Concatenated gzip members are read as one stream, as `gzip -d` does; anything after the
    last member that is not another member is corrupt.
    """
    gunzipper: _Gunzipper | None = None
    members = 0
    # The first bytes of a member, kept until there are enough to check the magic number.
    start = b""
    for chunk in chunks:
        data = chunk
        while True:
            if gunzipper is None:
                start += data
                if len(start) < len(_GZIP_MAGIC):
                    break
                _check_gzip_magic(start, members)
                data, start = start, b""
                gunzipper = _new_gunzipper()
                members += 1
            inflated = _inflate_step(gunzipper, data)
            if inflated:
                yield inflated
            if gunzipper.eof:
                data = gunzipper.unused_data
                gunzipper = None
                if not data:
                    break
            else:
                data = gunzipper.unconsumed_tail
                # A full step may leave output pending even when all input is used.
                if not data and len(inflated) < _INFLATE_STEP:
                    break
    _check_gzip_end(gunzipper is not None, start, members)


def _check_gzip_magic(start: bytes, members: int) -> None:
    """Refuse data that does not begin a gzip member where one must begin."""
    if not start.startswith(_GZIP_MAGIC):
        if members == 0:
            raise ExtractError("not a gzip archive")
        raise ExtractError("corrupt gzip data: garbage after the last gzip member")


def _inflate_step(gunzipper: _Gunzipper, data: bytes) -> bytes:
    """Up to `_INFLATE_STEP` inflated bytes; the inflater's own errors become ExtractError."""
    try:
        return gunzipper.decompress(data, _INFLATE_STEP)
    except _INFLATE_ERRORS as err:
        raise ExtractError(f"corrupt gzip data: {err}") from None


def _check_gzip_end(inside_member: bool, start: bytes, members: int) -> None:
    """Refuse a stream that ended inside a member, with stray bytes, or with no member."""
    if inside_member or (start and _GZIP_MAGIC.startswith(start)):
        raise ExtractError("truncated archive: the gzip data ends early")
    if start:
        raise ExtractError(
            "not a gzip archive" if members == 0 else "corrupt gzip data: garbage at the end"
        )
    if members == 0:
        raise ExtractError("truncated archive: no data")


class _Prefetcher:
    """Runs one stage of the pipeline (an iterator) on a background thread of its own.

    Items, and the exception that ended the iterator if any, reach the consumer in order.
    """

    def __init__(self, source: Generator[bytes, None, None], name: str) -> None:
        self._source = source
        self._queue: queue.Queue[bytes | BaseException | None] = queue.Queue(_QUEUE_DEPTH)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for item in self._source:
                self._queue.put(item)
                if self._stop.is_set():
                    return
        except BaseException as err:  # handed to the consumer, who raises it
            self._queue.put(err)
        else:
            self._queue.put(None)
        finally:
            self._source.close()

    def __iter__(self) -> Iterator[bytes]:
        while True:
            item = self._queue.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self) -> None:
        """Stop the thread and wait for it; it never outlives the call that started it."""
        self._stop.set()
        while self._thread.is_alive():
            # Make room for a put the thread may be blocked in.
            with contextlib.suppress(queue.Empty):
                self._queue.get(timeout=0.05)
        self._thread.join()


# -- tar ---------------------------------------------------------------------------------------


class _TarReader:
    """Hands out exact byte ranges of the inflated tar across chunk boundaries.

    File data goes from the inflated chunks to the file with no copy in between.
    """

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = iter(chunks)
        self._buffer = b""
        self._view = memoryview(self._buffer)
        self._pos = 0

    def _next_chunk(self) -> bool:
        chunk = next(self._chunks, None)
        if chunk is None:
            return False
        self._buffer = chunk
        self._view = memoryview(chunk)
        self._pos = 0
        return True

    def block(self) -> bytes:
        """The next 512-byte block; shorter, possibly empty, only at the end of the data."""
        pos = self._pos
        end = pos + _BLOCK
        if end <= len(self._buffer):
            self._pos = end
            return self._buffer[pos:end]
        return self._take_across(_BLOCK)

    def take(self, size: int) -> bytes:
        """Exactly `size` bytes, plus the padding to the next block boundary."""
        data = self._take_across(size)
        if len(data) < size:
            raise _truncated()
        self.skip(-size % _BLOCK)
        return data

    def _take_across(self, size: int) -> bytes:
        """Up to `size` bytes; fewer only at the end of the data."""
        parts = []
        while True:
            step = min(len(self._buffer) - self._pos, size)
            if step:
                parts.append(self._buffer[self._pos : self._pos + step])
                self._pos += step
                size -= step
            if not size or not self._next_chunk():
                return b"".join(parts)

    def copy(self, size: int, fd: int) -> None:
        """Write the next `size` bytes to `fd`, then skip the padding."""
        padding = -size % _BLOCK
        pos = self._pos
        end = pos + size
        if size and end + padding <= len(self._buffer):
            # The usual case in an asset of small files: the member lies whole in this chunk
            # (an empty one needs no write at all).
            _write_all(fd, self._view[pos:end])
            self._pos = end + padding
            return
        while size:
            available = len(self._buffer) - self._pos
            if not available:
                if not self._next_chunk():
                    raise _truncated()
                continue
            step = min(available, size)
            _write_all(fd, self._view[self._pos : self._pos + step])
            self._pos += step
            size -= step
        self.skip(padding)

    def skip(self, size: int) -> None:
        """Pass over the next `size` bytes."""
        while True:
            available = len(self._buffer) - self._pos
            if size <= available:
                self._pos += size
                return
            size -= available
            if not self._next_chunk():
                raise _truncated()

    def drain(self) -> None:
        """Read the rest of the data, so the gzip trailer and the hash cover every byte."""
        while self._next_chunk():
            pass
        self._pos = len(self._buffer)


def _write_all(fd: int, data: memoryview) -> None:
    written = os.write(fd, data)
    while written < len(data):
        written += os.write(fd, data[written:])


def _truncated() -> ExtractError:
    return ExtractError("truncated archive: the tar data ends inside a member")


def _number(field: bytes) -> int:
    """A numeric header field: octal text, or GNU base-256 for values octal cannot hold."""
    try:
        # Octal digits up to the first NUL, blanks around them allowed (as `int` allows).
        # Every header has four numbers, so the usual form is tried first.
        return int(field.partition(b"\0")[0], 8)
    except ValueError:
        return _unusual_number(field)


def _unusual_number(field: bytes) -> int:
    """A numeric field that is not octal text: base-256, blank (0), or invalid."""
    if field and field[0] & 0x80:
        if field[0] == 0xFF:
            return int.from_bytes(field, "big", signed=True)
        return int.from_bytes(field[1:], "big")
    if not field.partition(b"\0")[0].strip():
        return 0
    raise ExtractError("corrupt archive: a tar header holds an invalid number")


# Bytes below 128, deleted to count the others for the signed checksum variant.
_LOW_BYTES = bytes(range(128))


def _checksum_ok(block: bytes) -> bool:
    try:
        stored = _number(block[148:156])
    except ExtractError:
        return False
    # The checksum field itself counts as eight spaces.
    unsigned = _byte_sum(block[:256]) + _byte_sum(block[256:]) - sum(block[148:156]) + 8 * 32
    if stored == unsigned:
        return True
    # Some old writers summed the bytes as signed chars.
    high = len(block[:148].translate(None, _LOW_BYTES)) + len(
        block[156:].translate(None, _LOW_BYTES)
    )
    return stored == unsigned - 256 * high


def _byte_sum(data: bytes) -> int:
    """The sum of up to 256 bytes, exactly.

    Adler-32's first half is 1 + the byte sum modulo 65521, and 256 bytes sum to at most
    65280, so nothing wraps. It runs in C: `sum()` over a 512-byte header takes a few
    microseconds, the largest part of parsing one, which counts in assets of small files.
    """
    return (zlib.adler32(data) & 0xFFFF) - 1


def _text(raw: bytes) -> str:
    # The same decoding os.fsencode undoes, so any byte string round-trips to the file name.
    return raw.decode("utf-8", "surrogateescape")


def _field_text(field: bytes) -> str:
    # _text's decoding, repeated here: this runs for every member's header.
    return field.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def _parse_pax(data: bytes) -> dict[str, str]:
    """Records of a pax extended header: `<length> <key>=<value>\\n`, length counting all."""
    records: dict[str, str] = {}
    pos = 0
    while pos < len(data) and data[pos] != 0:
        space = data.find(b" ", pos, pos + 20)
        try:
            length = int(data[pos:space]) if space > pos else 0
        except ValueError:
            length = 0
        end = pos + length
        if length <= 0 or end > len(data) or data[end - 1] != 0x0A:
            raise ExtractError("corrupt archive: malformed pax header")
        key, equals, value = data[space + 1 : end - 1].partition(b"=")
        if not equals or b"\0" in value:
            raise ExtractError("corrupt archive: malformed pax header")
        records[_text(key)] = _text(value)
        pos = end
    return records


_PAX_SIZE = re.compile(r"\d{1,20}", re.ASCII)
_PAX_TIME = re.compile(r"(-?)(\d{1,12})(?:\.(\d*))?", re.ASCII)


def _pax_size(value: str) -> int:
    if not _PAX_SIZE.fullmatch(value):
        raise ExtractError("corrupt archive: invalid pax size")
    return int(value)


def _pax_time_ns(value: str) -> int:
    match = _PAX_TIME.fullmatch(value)
    if not match:
        raise ExtractError("corrupt archive: invalid pax mtime")
    sign, seconds, fraction = match.groups()
    ns = int(seconds) * 1_000_000_000 + int((fraction or "")[:9].ljust(9, "0"))
    return -ns if sign else ns


class _Counts:
    def __init__(self) -> None:
        self.members = 0
        self.files = 0
        self.directories = 0
        self.symlinks = 0
        self.file_bytes = 0


def _unpack(tar: _TarReader, writer: _Writer) -> _Counts:
    """Walk the archive's headers, judge every member, and hand the safe ones to `writer`.

    The loop runs once per member, tens of thousands of times in an asset of small files,
    so what every member needs stays inline here, and what only some need (extended
    headers, errors) is in functions of its own.
    """
    members = _Members(tar, writer)
    add = members.add
    extensions = _Extensions()
    first = True
    while True:
        block = tar.block()
        if block == _ZERO_BLOCK:
            break
        if len(block) < _BLOCK or not _checksum_ok(block):
            raise _bad_header(block, first=first)
        first = False
        kind = block[156]
        size = _number(block[124:136])
        if size < 0:
            raise ExtractError("corrupt archive: a tar header has a negative size")
        if kind in _EXTENSION_TYPES:
            extensions.read(kind, tar.take(_meta_size(size)))
            continue
        if extensions.pending:
            name, link, size, mtime_ns = extensions.apply(block, size)
        else:
            name = _header_name(block)
            link = _field_text(block[157:257]) if kind in _LINK_TYPES else ""
            mtime_ns = _number(block[136:148]) * 1_000_000_000
        if not _MIN_TIME_NS <= mtime_ns <= _MAX_TIME_NS:
            raise ExtractError("corrupt archive: a member's mtime is out of range")
        mode = _number(block[100:108]) & MODE_MASK
        if kind in _REGULAR_TYPES and name.endswith("/"):
            # How old BSD tars marked a directory; GNU tar honours it too.
            tar.skip(size + -size % _BLOCK)
            kind = _DIRECTORY_TYPE
        add(kind, name, link, size, mode=mode, mtime_ns=mtime_ns)
    return members.finish()


def _bad_header(block: bytes, *, first: bool) -> ExtractError:
    """Why a header block is not one: the first says the data is no tar at all."""
    if len(block) < _BLOCK:
        if first:
            return ExtractError("not a tar archive: too short")
        return ExtractError("truncated archive: the tar data has no end-of-archive marker")
    if first:
        return ExtractError("not a tar archive")
    return ExtractError("corrupt archive: a tar header has a bad checksum")


def _header_name(block: bytes) -> str:
    """The member name a header holds, with the ustar prefix field when there is one."""
    if block[257:265] == _POSIX_MAGIC and block[345] != 0:
        return _field_text(block[345:500]) + "/" + _field_text(block[0:100])
    return _field_text(block[0:100])


class _Members:
    """Admits each member by the safety rules, hands it to the writer, and counts it."""

    def __init__(self, tar: _TarReader, writer: _Writer) -> None:
        self._tar = tar
        self._writer = writer
        self._tree = Tree()
        self._counts = _Counts()

    def add(self, kind: int, name: str, link: str, size: int, *, mode: int, mtime_ns: int) -> None:
        tree, writer, counts = self._tree, self._writer, self._counts
        if kind in _REGULAR_TYPES:
            verdict = tree.admit(FILE, name, "")
            writer.file(verdict, self._tar, size, mode=mode, mtime_ns=mtime_ns)
            counts.files += 1
            counts.file_bytes += size
        elif kind == _DIRECTORY_TYPE:
            verdict = tree.admit(DIR, name, "")
            writer.directory(verdict, mode=mode, mtime_ns=mtime_ns)
        elif kind == _SYMLINK_TYPE:
            verdict = tree.admit(LINK, name, link)
            writer.symlink(verdict, link, mtime_ns=mtime_ns)
            counts.symlinks += 1
        elif kind == _HARDLINK_TYPE:
            verdict = tree.admit(HARDLINK, name, link)
            writer.hardlink(verdict)
            counts.files += 1
        else:
            raise refused_type(name, kind)
        if verdict.path:
            counts.members += 1

    def finish(self) -> _Counts:
        """What was added, once the archive's end is reached; the writer finishes its work."""
        self._counts.directories = self._tree.directories
        self._tar.drain()
        self._writer.finish()
        return self._counts


class _Extensions:
    """Extended headers (pax, GNU long names and links) waiting for the member they describe.

    A pax global header applies to every member after it; the others to the next one only.
    """

    def __init__(self) -> None:
        self.global_pax: dict[str, str] = {}
        self.pax: dict[str, str] = {}
        self.long_name: str | None = None
        self.long_link: str | None = None
        # Whether the next member has anything to apply.
        self.pending = False

    def read(self, kind: int, data: bytes) -> None:
        """Keep the payload of an extended header of type `kind` for the member after it."""
        if kind == _GNU_LONG_NAME_TYPE:
            self.long_name = _field_text(data)
        elif kind == _GNU_LONG_LINK_TYPE:
            self.long_link = _field_text(data)
        else:
            (self.pax if kind in _PAX_TYPES else self.global_pax).update(_parse_pax(data))
        self.pending = True

    def apply(self, block: bytes, size: int) -> tuple[str, str, int, int]:
        """The name, link target, size and mtime (ns) of the member whose header is `block`."""
        name = self.long_name if self.long_name is not None else _header_name(block)
        link = self.long_link if self.long_link is not None else _field_text(block[157:257])
        mtime_ns = _number(block[136:148]) * 1_000_000_000
        if self.pax or self.global_pax:
            records = {**self.global_pax, **self.pax}
            name = records.get("path", name)
            link = records.get("linkpath", link)
            if "size" in records:
                size = _pax_size(records["size"])
            if "mtime" in records:
                mtime_ns = _pax_time_ns(records["mtime"])
            check_pax_records(name, records)
            self.pax = {}
        self.long_name = self.long_link = None
        self.pending = bool(self.global_pax)
        return name, link, size, mtime_ns


def _meta_size(size: int) -> int:
    if size > _MAX_META_BYTES:
        raise ExtractError("corrupt archive: an extended header is too large")
    return size


# -- writers -----------------------------------------------------------------------------------


class _Writer(Protocol):
    def file(
        self, verdict: Verdict, tar: _TarReader, size: int, *, mode: int, mtime_ns: int
    ) -> None: ...

    def directory(self, verdict: Verdict, *, mode: int, mtime_ns: int) -> None: ...

    def symlink(self, verdict: Verdict, target: str, *, mtime_ns: int) -> None: ...

    def hardlink(self, verdict: Verdict) -> None: ...

    def finish(self) -> None: ...


class _DiskWriter:
    """Writes admitted members under the root. Never chowns: files belong to the installer."""

    def __init__(self, root: Path) -> None:
        self._root = os.fspath(root).rstrip("/") + "/"
        self._umask = _read_umask()
        # Mode and mtime (None if the archive does not list the directory) to set at the end.
        self._directories: dict[str, tuple[int, int | None]] = {}

    def _make_parents(self, parents: list[str]) -> None:
        for path in parents:
            os.mkdir(self._root + path, _BUILD_DIR_MODE)
            self._directories[path] = (_IMPLIED_DIR_MODE, None)

    def file(
        self, verdict: Verdict, tar: _TarReader, size: int, *, mode: int, mtime_ns: int
    ) -> None:
        if verdict.parents:
            self._make_parents(verdict.parents)
        full = self._root + verdict.path
        if verdict.replaces:
            os.unlink(full)
        # A file is created with its own mode when the umask leaves that mode whole, which
        # saves a chmod per file (thousands in an asset of small files); else it is created
        # private and given its exact mode afterwards. A umask tightened since it was read
        # could only leave a file fewer permissions, never more.
        exact = self._umask is not None and not mode & self._umask
        fd = os.open(full, _CREATE_FLAGS, mode if exact else 0o600)
        try:
            tar.copy(size, fd)
            if not exact:
                os.fchmod(fd, mode)
            os.utime(fd, ns=(mtime_ns, mtime_ns))
        finally:
            os.close(fd)

    def directory(self, verdict: Verdict, *, mode: int, mtime_ns: int) -> None:
        if verdict.path:
            self._make_parents(verdict.parents)
            self._directories[verdict.path] = (mode, mtime_ns)

    def symlink(self, verdict: Verdict, target: str, *, mtime_ns: int) -> None:
        if verdict.parents:
            self._make_parents(verdict.parents)
        full = self._root + verdict.path
        if verdict.replaces:
            os.unlink(full)
        os.symlink(target, full)
        os.utime(full, ns=(mtime_ns, mtime_ns), follow_symlinks=False)

    def hardlink(self, verdict: Verdict) -> None:
        if verdict.target == verdict.path:
            return  # already satisfied, and unlinking first would lose the file
        if verdict.parents:
            self._make_parents(verdict.parents)
        full = self._root + verdict.path
        if verdict.replaces:
            os.unlink(full)
        os.link(self._root + verdict.target, full, follow_symlinks=False)

    def finish(self) -> None:
        # Deepest first: a parent that loses its search or write bit must come after its children.
        for path in sorted(self._directories, key=lambda p: p.count("/"), reverse=True):
            mode, mtime_ns = self._directories[path]
            full = self._root + path
            os.chmod(full, mode)
            if mtime_ns is not None:
                os.utime(full, ns=(mtime_ns, mtime_ns))


def _read_umask() -> int | None:
    """The process's umask, or None if unknown.

    Read from /proc: `os.umask` can only read it by setting it, a race with any other thread
    creating files meanwhile.
    """
    try:
        with open("/proc/self/status", "rb") as status:
            for line in status:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return None


class _NullWriter:
    """Writes nothing: for checking an archive before it is uploaded."""

    def file(
        self, verdict: Verdict, tar: _TarReader, size: int, *, mode: int, mtime_ns: int
    ) -> None:
        tar.skip(size + -size % _BLOCK)

    def directory(self, verdict: Verdict, *, mode: int, mtime_ns: int) -> None:
        pass

    def symlink(self, verdict: Verdict, target: str, *, mtime_ns: int) -> None:
        pass

    def hardlink(self, verdict: Verdict) -> None:
        pass

    def finish(self) -> None:
        pass
