"""Tests for safe_extract and check_archive: good archives, hand-built hostile ones, a property."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import random
import stat
import tarfile
import tempfile
import threading
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from daybook.errors import ExtractError, IntegrityError
from daybook.install import extract as extract_module
from daybook.install import safety
from daybook.install.extract import (
    DEFAULT_CHUNK_SIZE,
    ArchiveSummary,
    ExtractStats,
    check_archive,
    safe_extract,
)

MTIME = 1_700_000_000


# -- building archives -----------------------------------------------------------------------


@dataclass
class Member:
    """One member to write; `kind` is a tarfile type constant."""

    name: str
    data: bytes = b""
    kind: bytes = tarfile.REGTYPE
    link: str = ""
    mode: int = 0o644
    mtime: float = MTIME


def file(name: str, data: bytes = b"data", mode: int = 0o644) -> Member:
    return Member(name, data, mode=mode)


def directory(name: str, mode: int = 0o755) -> Member:
    return Member(name, kind=tarfile.DIRTYPE, mode=mode)


def symlink(name: str, target: str) -> Member:
    return Member(name, kind=tarfile.SYMTYPE, link=target, mode=0o777)


def hardlink(name: str, target: str) -> Member:
    return Member(name, kind=tarfile.LNKTYPE, link=target)


def tar_bytes(members: list[Member], fmt: int = tarfile.PAX_FORMAT) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=fmt) as archive:
        for member in members:
            info = tarfile.TarInfo(member.name)
            info.type = member.kind
            info.linkname = member.link
            info.mode = member.mode
            info.mtime = member.mtime
            info.size = len(member.data) if member.kind == tarfile.REGTYPE else 0
            archive.addfile(info, io.BytesIO(member.data) if info.size else None)
    return buffer.getvalue()


def targz(members: list[Member], fmt: int = tarfile.PAX_FORMAT) -> bytes:
    return gzip.compress(tar_bytes(members, fmt), mtime=0)


def header(name: str, typeflag: bytes, size: int = 0, linkname: str = "") -> bytes:
    """A ustar header built by hand, for what tarfile will not write."""
    block = bytearray(512)
    block[0:100] = name.encode().ljust(100, b"\0")
    block[100:108] = b"0000644\0"
    block[108:124] = b"0000000\0" * 2
    block[124:136] = f"{size:011o}\0".encode()
    block[136:148] = f"{MTIME:011o}\0".encode()
    block[148:156] = b" " * 8
    block[156:157] = typeflag
    block[157:257] = linkname.encode().ljust(100, b"\0")
    block[257:265] = b"ustar\x0000"
    block[148:156] = f"{sum(block):06o}\0 ".encode()
    return bytes(block)


def pax_record(key: str, value: str) -> bytes:
    """`<length> key=value\\n`, where the length counts its own digits."""
    body = f" {key}={value}\n".encode()
    length = len(body)
    while length != len(body) + len(str(length)):
        length = len(body) + len(str(length))
    return str(length).encode() + body


def padded(data: bytes) -> bytes:
    return data + bytes(-len(data) % 512)


END = bytes(1024)


# -- the sandbox: proof that nothing escaped -------------------------------------------------


@dataclass
class Sandbox:
    """`dest` sits several levels deep, so that any escape lands somewhere we watch."""

    root: Path
    dest: Path

    def snapshot(self) -> set[str]:
        """Every path under root outside dest, with its kind; symlinks are never followed."""
        seen = set()
        for top, dirs, files in os.walk(self.root):
            for name in dirs + files:
                path = Path(top, name)
                if path == self.dest or self.dest in path.parents:
                    continue
                seen.add(f"{path.relative_to(self.root)}:{stat.S_IFMT(path.lstat().st_mode)}")
        return seen


def make_sandbox(base: Path) -> Sandbox:
    root = base / "sandbox"
    dest = root.joinpath(*[f"level{i}" for i in range(8)], "dest")
    dest.mkdir(parents=True)
    (root / "outside.txt").write_text("do not touch")
    return Sandbox(root, dest)


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[Sandbox]:
    box = make_sandbox(tmp_path)
    before = box.snapshot()
    yield box
    assert box.snapshot() == before, "something was written outside dest"
    assert (box.root / "outside.txt").read_text() == "do not touch"
    assert_links_inside(box.dest)
    assert not pipeline_threads()


def pipeline_threads() -> list[str]:
    """The extractor's reading and inflating threads still alive."""
    return [t.name for t in threading.enumerate() if t.name in ("daybook-read", "daybook-inflate")]


def assert_links_inside(dest: Path) -> None:
    real_dest = os.path.realpath(dest)
    for top, dirs, files in os.walk(dest):
        for name in dirs + files:
            path = os.path.join(top, name)
            if os.path.islink(path):
                resolved = resolve(path, [0])
                assert (
                    resolved is None
                    or resolved == real_dest
                    or resolved.startswith(real_dest + os.sep)
                ), f"{path} -> {os.readlink(path)} leads to {resolved}"


def resolve(path: str, hops: list[int]) -> str | None:
    """Where the kernel would take the absolute `path`; missing parts are followed lexically.

    None for a symlink loop, which goes nowhere. (os.path.realpath returns odd paths for loops.)
    """
    current = "/"
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            current = os.path.dirname(current)
            continue
        candidate = os.path.join(current, part)
        if os.path.islink(candidate):
            hops[0] += 1
            if hops[0] > 40:
                return None
            followed = resolve(os.path.join(current, os.readlink(candidate)), hops)
            if followed is None:
                return None
            current = followed
        else:
            current = candidate
    return current


def tree(dest: Path) -> dict[str, str]:
    """What dest holds: file contents, `dir`, or `-> target`."""
    found = {}
    for top, dirs, files in os.walk(dest):
        for name in dirs + files:
            path = Path(top, name)
            rel = path.relative_to(dest).as_posix()
            if path.is_symlink():
                found[rel] = f"-> {os.readlink(path)}"
            elif path.is_dir():
                found[rel] = "dir"
            else:
                found[rel] = path.read_bytes().decode()
    return found


def extract(
    data: bytes,
    dest: Path,
    *,
    expected_sha256: str | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> ExtractStats:
    return safe_extract(
        io.BytesIO(data), dest, expected_sha256=expected_sha256, chunk_size=chunk_size
    )


def check(data: bytes, directory: Path) -> ArchiveSummary:
    path = directory / "check.tar.gz"
    path.write_bytes(data)
    try:
        return check_archive(path)
    finally:
        path.unlink()


# -- good archives -----------------------------------------------------------------------------


def test_extracts_files_directories_and_modes(sandbox: Sandbox) -> None:
    data = targz(
        [
            directory("bin", 0o755),
            file("bin/run", b"#!/bin/sh\n", 0o755),
            file("conf/app.toml", b"x = 1\n", 0o640),
        ]
    )
    stats = extract(data, sandbox.dest)
    assert tree(sandbox.dest) == {
        "bin": "dir",
        "bin/run": "#!/bin/sh\n",
        "conf": "dir",
        "conf/app.toml": "x = 1\n",
    }
    assert stat.S_IMODE((sandbox.dest / "bin/run").stat().st_mode) == 0o755
    assert stat.S_IMODE((sandbox.dest / "conf/app.toml").stat().st_mode) == 0o640
    assert stats == ExtractStats(
        files=2,
        directories=2,
        symlinks=0,
        bytes_written=16,
        compressed_bytes=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
    )


def test_nested_directories_without_entries_are_created(sandbox: Sandbox) -> None:
    extract(targz([file("a/b/c/deep.txt", b"deep"), file("a/top.txt", b"top")]), sandbox.dest)
    assert tree(sandbox.dest) == {
        "a": "dir",
        "a/b": "dir",
        "a/b/c": "dir",
        "a/b/c/deep.txt": "deep",
        "a/top.txt": "top",
    }
    assert stat.S_IMODE((sandbox.dest / "a/b").stat().st_mode) == 0o755


def test_directory_entry_after_its_files_sets_mode_and_mtime_last(sandbox: Sandbox) -> None:
    members = [file("d/inner/x", b"x"), directory("d/inner", 0o550), directory("d", 0o750)]
    members[2].mtime = 1_600_000_000
    extract(targz(members), sandbox.dest)
    try:
        assert (sandbox.dest / "d/inner/x").read_bytes() == b"x"
        assert stat.S_IMODE((sandbox.dest / "d").stat().st_mode) == 0o750
        assert stat.S_IMODE((sandbox.dest / "d/inner").stat().st_mode) == 0o550
        assert (sandbox.dest / "d").stat().st_mtime == 1_600_000_000
    finally:
        (sandbox.dest / "d/inner").chmod(0o755)


def test_modes_are_exact_whatever_the_umask(sandbox: Sandbox) -> None:
    # Files are created with their own mode only where the umask leaves it whole; under a
    # umask that strips bits they must still end up with the archive's modes.
    members = [file("open", mode=0o666), file("run", mode=0o755), file("private", mode=0o600)]
    old = os.umask(0o077)
    try:
        extract(targz(members), sandbox.dest)
    finally:
        os.umask(old)
    modes = {
        name: stat.S_IMODE((sandbox.dest / name).stat().st_mode) for name in tree(sandbox.dest)
    }
    assert modes == {"open": 0o666, "run": 0o755, "private": 0o600}


def test_setuid_setgid_and_sticky_bits_are_stripped(sandbox: Sandbox) -> None:
    members = [
        file("suid", mode=0o4755),
        file("sgid", mode=0o2755),
        directory("sticky", mode=0o1777),
    ]
    extract(targz(members), sandbox.dest)
    assert stat.S_IMODE((sandbox.dest / "suid").stat().st_mode) == 0o755
    assert stat.S_IMODE((sandbox.dest / "sgid").stat().st_mode) == 0o755
    assert stat.S_IMODE((sandbox.dest / "sticky").stat().st_mode) == 0o777


def test_mtimes_come_from_the_archive(sandbox: Sandbox) -> None:
    members = [file("f"), symlink("l", "f"), directory("d")]
    mtimes = (1_500_000_000.0, 1_400_000_000.0, 1_300_000_000.5)
    for member, mtime in zip(members, mtimes, strict=True):
        member.mtime = mtime
    extract(targz(members), sandbox.dest)
    assert (sandbox.dest / "f").stat().st_mtime == 1_500_000_000
    assert (sandbox.dest / "l").lstat().st_mtime == 1_400_000_000
    assert (sandbox.dest / "d").stat().st_mtime_ns == 1_300_000_000_500_000_000


def test_negative_mtime_in_base_256_is_read(sandbox: Sandbox) -> None:
    member = file("old")
    member.mtime = -86_400
    extract(targz([member], fmt=tarfile.GNU_FORMAT), sandbox.dest)
    assert (sandbox.dest / "old").stat().st_mtime == -86_400


def header_with_mode_field(field: bytes) -> bytes:
    """`header("f", b"0")` with its mode field replaced and its checksum made right again."""
    block = bytearray(header("f", b"0"))
    block[100:108] = field
    block[148:156] = b" " * 8
    block[148:156] = f"{sum(block):06o}\0 ".encode()
    return bytes(block)


@pytest.mark.parametrize(
    ("field", "mode"),
    [
        (b"0000644\0", 0o644),  # GNU tar, Python's tarfile
        (b"000644 \0", 0o644),  # bsdtar
        (b"   644\0\0", 0o644),  # blanks before the digits
        (b"644\0\0\0\0\0", 0o644),
        (b"00000644", 0o644),  # no terminator at all
        (b"0000755\0", 0o755),
    ],
)
def test_numeric_fields_in_each_writers_form(sandbox: Sandbox, field: bytes, mode: int) -> None:
    extract(gzip.compress(header_with_mode_field(field) + END), sandbox.dest)
    assert stat.S_IMODE((sandbox.dest / "f").stat().st_mode) == mode


def test_a_blank_numeric_field_reads_as_zero(sandbox: Sandbox) -> None:
    extract(gzip.compress(header_with_mode_field(b"  \0\0\0\0\0\0") + END), sandbox.dest)
    assert stat.S_IMODE((sandbox.dest / "f").stat().st_mode) == 0


@pytest.mark.parametrize(
    "field", [b"6 44\0\0\0\0", b"0000648\0", b"0\x80\0\0\0\0\0\0", b"xyz\0\0\0\0\0"]
)
def test_a_numeric_field_that_is_not_a_number_is_refused(sandbox: Sandbox, field: bytes) -> None:
    with pytest.raises(ExtractError, match="invalid number"):
        extract(gzip.compress(header_with_mode_field(field) + END), sandbox.dest)


def test_symlinks_inside_the_tree_work(sandbox: Sandbox) -> None:
    members = [
        file("lib/tool.py", b"print()"),
        symlink("bin/tool", "../lib/tool.py"),
        symlink("current", "lib"),
        symlink("lib/self", "."),
        symlink("lib/dangling", "missing/file"),
        symlink("through", "current/tool.py"),
    ]
    stats = extract(targz(members), sandbox.dest)
    assert (sandbox.dest / "bin/tool").read_bytes() == b"print()"
    assert (sandbox.dest / "current/tool.py").read_bytes() == b"print()"
    assert (sandbox.dest / "lib/self/tool.py").read_bytes() == b"print()"
    assert (sandbox.dest / "through").read_bytes() == b"print()"
    assert os.readlink(sandbox.dest / "lib/dangling") == "missing/file"
    assert stats.symlinks == 5


def test_hard_link_to_an_earlier_file_shares_its_inode(sandbox: Sandbox) -> None:
    stats = extract(
        targz([file("a/original", b"same"), hardlink("b/copy", "a/original")]), sandbox.dest
    )
    original, copy = sandbox.dest / "a/original", sandbox.dest / "b/copy"
    assert copy.read_bytes() == b"same"
    assert original.stat().st_ino == copy.stat().st_ino
    assert stats.files == 2
    assert stats.bytes_written == 4


def test_hard_link_to_itself_is_a_no_op(sandbox: Sandbox) -> None:
    extract(targz([file("twice", b"once"), hardlink("twice", "twice")]), sandbox.dest)
    assert tree(sandbox.dest) == {"twice": "once"}


def test_duplicate_entries_last_one_wins(sandbox: Sandbox) -> None:
    extract(targz([file("f", b"first"), file("f", b"second")]), sandbox.dest)
    assert tree(sandbox.dest) == {"f": "second"}


def test_file_replacing_a_symlink_never_writes_through_it(sandbox: Sandbox) -> None:
    members = [file("target", b"keep"), symlink("x", "target"), file("x", b"new")]
    extract(targz(members), sandbox.dest)
    assert tree(sandbox.dest) == {"target": "keep", "x": "new"}


def test_symlink_replacing_a_file(sandbox: Sandbox) -> None:
    extract(targz([file("a", b"a"), file("x", b"x"), symlink("x", "a")]), sandbox.dest)
    assert tree(sandbox.dest) == {"a": "a", "x": "-> a"}


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT], ids=["pax", "gnu"])
def test_long_names_and_link_targets(sandbox: Sandbox, fmt: int) -> None:
    long_dir = "/".join(["directory-with-a-long-name"] * 6)
    long_file = f"{long_dir}/{'f' * 150}.txt"
    long_link = f"{long_dir}/{'l' * 120}"
    target = "/".join([".."] * 6) + "/" + long_file
    extract(targz([file(long_file, b"long"), symlink(long_link, target)], fmt), sandbox.dest)
    assert (sandbox.dest / long_file).read_bytes() == b"long"
    assert (sandbox.dest / long_link).read_bytes() == b"long"
    assert os.readlink(sandbox.dest / long_link) == target


def test_ustar_prefix_field(sandbox: Sandbox) -> None:
    name = "p" * 90 + "/" + "n" * 90
    extract(targz([file(name, b"split")], fmt=tarfile.USTAR_FORMAT), sandbox.dest)
    assert (sandbox.dest / name).read_bytes() == b"split"


def test_pax_fractional_mtime_and_unicode_names(sandbox: Sandbox) -> None:
    member = file("naïve/日本.txt", b"u")
    member.mtime = 1_600_000_000.25
    extract(targz([member]), sandbox.dest)
    assert (sandbox.dest / "naïve/日本.txt").stat().st_mtime_ns == 1_600_000_000_250_000_000


def test_dot_slash_names_and_root_entry(sandbox: Sandbox) -> None:
    members = [directory("."), directory("./sub"), file("./sub//x", b"x"), file(".//./y", b"y")]
    extract(targz(members), sandbox.dest)
    assert tree(sandbox.dest) == {"sub": "dir", "sub/x": "x", "y": "y"}


def test_a_global_pax_header_applies_to_every_later_member(sandbox: Sandbox) -> None:
    # A global header's records hold until the end; a member's own pax header and GNU long
    # name apply to the next member only, and override the global records for it.
    global_mtime = pax_record("mtime", "1500000000")
    own_mtime = pax_record("mtime", "1400000000")
    long_name = b"long-" + b"n" * 120 + b"\0"
    data = gzip.compress(
        header("f1", b"0")
        + header("global", b"g", len(global_mtime))
        + padded(global_mtime)
        + header("f2", b"0")
        + header("own", b"x", len(own_mtime))
        + padded(own_mtime)
        + header("././@LongLink", b"L", len(long_name))
        + padded(long_name)
        + header("short", b"0")
        + header("f4", b"0")
        + END
    )
    extract(data, sandbox.dest)
    mtimes = {path.name: path.stat().st_mtime for path in sandbox.dest.iterdir()}
    assert mtimes == {
        "f1": MTIME,
        "f2": 1_500_000_000,
        "long-" + "n" * 120: 1_400_000_000,
        "f4": 1_500_000_000,
    }


def test_old_style_directory_entry(sandbox: Sandbox) -> None:
    data = gzip.compress(
        header("olddir/", b"\0") + header("olddir/f", b"0", 1) + padded(b"z") + END
    )
    extract(data, sandbox.dest)
    assert tree(sandbox.dest) == {"olddir": "dir", "olddir/f": "z"}


def test_regular_entry_with_trailing_slash_is_a_directory(sandbox: Sandbox) -> None:
    data = gzip.compress(header("bsd/", b"0", 3) + padded(b"xyz") + header("bsd/f", b"0") + END)
    extract(data, sandbox.dest)
    assert tree(sandbox.dest) == {"bsd": "dir", "bsd/f": ""}


def test_empty_archive_is_valid(sandbox: Sandbox) -> None:
    data = targz([])
    stats = extract(data, sandbox.dest)
    assert (stats.files, stats.directories, stats.symlinks, stats.bytes_written) == (0, 0, 0, 0)
    assert tree(sandbox.dest) == {}
    assert check(data, sandbox.root).members == 0


def test_concatenated_gzip_members_are_one_stream(sandbox: Sandbox) -> None:
    raw = tar_bytes([file("a", b"a" * 3000), file("b", b"b")])
    data = gzip.compress(raw[:1000]) + gzip.compress(raw[1000:2000]) + gzip.compress(raw[2000:])
    stats = extract(data, sandbox.dest)
    assert tree(sandbox.dest) == {"a": "a" * 3000, "b": "b"}
    assert stats.compressed_bytes == len(data)


@pytest.mark.parametrize("chunk_size", [1, 7, 512, 4096, 1 << 20])
def test_any_chunk_size_gives_the_same_result(sandbox: Sandbox, chunk_size: int) -> None:
    rng = random.Random(chunk_size)
    members = [file(f"d{i % 3}/f{i}", rng.randbytes(rng.randrange(0, 2000))) for i in range(40)]
    if chunk_size > 1:
        members.append(file("big", rng.randbytes(300_000) + bytes(3_000_000)))
    stats = extract(targz(members), sandbox.dest, chunk_size=chunk_size)
    for member in members:
        assert (sandbox.dest / member.name).read_bytes() == member.data
    assert stats.files == len(members)


def test_sha256_match_passes_in_any_case(sandbox: Sandbox) -> None:
    data = targz([file("f")])
    stats = extract(data, sandbox.dest, expected_sha256=hashlib.sha256(data).hexdigest().upper())
    assert stats.sha256 == hashlib.sha256(data).hexdigest()


def test_sha256_mismatch_raises_integrity_error(sandbox: Sandbox) -> None:
    data = targz([file("f")])
    actual = hashlib.sha256(data).hexdigest()
    with pytest.raises(IntegrityError, match=f"expected {'ab' * 6}.*got {actual[:12]}"):
        extract(data, sandbox.dest, expected_sha256="ab" * 32)


def test_check_archive_summarises_a_good_archive(tmp_path: Path) -> None:
    data = targz([directory("d"), file("d/a", b"12345"), symlink("l", "d/a"), hardlink("h", "d/a")])
    summary = check(data, tmp_path)
    assert summary == ArchiveSummary(
        members=4,
        unpacked_bytes=5,
        compressed_bytes=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
    )


def test_dest_must_be_empty(tmp_path: Path) -> None:
    (tmp_path / "leftover").touch()
    with pytest.raises(ValueError, match="not empty"):
        extract(targz([file("f")]), tmp_path)


def test_stream_errors_propagate_and_stop_the_thread(sandbox: Sandbox) -> None:
    class FailingStream:
        def __init__(self) -> None:
            self._data = io.BytesIO(targz([file("f", random.Random(1).randbytes(100_000))]))

        def read(self, size: int) -> bytes:
            if self._data.tell() > 20_000:
                raise ConnectionResetError("peer went away")
            return self._data.read(size)

    with pytest.raises(ConnectionResetError, match="peer went away"):
        safe_extract(FailingStream(), sandbox.dest, chunk_size=4096)
    assert not pipeline_threads()


def test_an_unsafe_member_early_in_a_long_archive_stops_every_thread(sandbox: Sandbox) -> None:
    # The writer gives up at the first member while both stages upstream still have most
    # of the archive to read and inflate; leaving must stop and join them all the same.
    rng = random.Random(3)
    data = targz([file("../escape"), *(file(f"f{i}", rng.randbytes(100_000)) for i in range(60))])
    with pytest.raises(ExtractError, match=r"'\.\.' is not allowed"):
        safe_extract(io.BytesIO(data), sandbox.dest, chunk_size=1024)
    assert not pipeline_threads()


def test_a_header_checksum_off_by_the_adler_modulus_is_refused(sandbox: Sandbox) -> None:
    # Header bytes are summed with Adler-32 in halves small enough never to wrap; a checksum
    # that only agrees modulo 65521 must still be caught.
    block = bytearray(header("f", b"0"))
    stored = int(block[148:154], 8)
    block[148:156] = f"{stored + 65521:06o}\0 ".encode()
    with pytest.raises(ExtractError, match="not a tar archive"):
        extract(gzip.compress(bytes(block) + END), sandbox.dest)


# -- hostile archives ----------------------------------------------------------------------------

# Each builder gets the sandbox root, so absolute paths can aim at a place the test watches.
Builder = Callable[[Path], bytes]


def members(*items: Member) -> Builder:
    return lambda root: targz(list(items))


HOSTILE: dict[str, tuple[Builder, str]] = {
    "dotdot": (members(file("../x")), "'..' is not allowed"),
    "dotdot-inside": (members(file("a/../../x")), "'..' is not allowed"),
    "dotdot-after-dot": (members(file("./../x")), "'..' is not allowed"),
    "dotdot-directory": (members(directory("a/../..")), "'..' is not allowed"),
    "absolute": (lambda root: targz([file(f"{root}/absolute")]), "absolute paths"),
    "absolute-etc": (members(file("/etc/daybook-test-escape")), "absolute paths"),
    "symlink-absolute": (lambda root: targz([symlink("link", str(root))]), "is absolute"),
    "symlink-up": (members(symlink("link", "../outside")), "points outside"),
    "symlink-up-deep": (members(symlink("a/b/link", "../../../x")), "points outside"),
    "symlink-dotdot-after-name": (
        members(directory("sub"), symlink("sub/up", ".."), symlink("escape", "sub/up/..")),
        "'..' after a name",
    ),
    "symlink-dotdot-chain-later": (
        members(symlink("l2", "sub/l1/.."), symlink("sub/l1", "..")),
        "'..' after a name",
    ),
    "symlink-empty-target": (members(symlink("link", "")), "target is empty"),
    "symlink-then-file-absolute": (
        lambda root: targz([symlink("link", str(root)), file("link/evil")]),
        "is absolute",
    ),
    "symlink-then-file-through": (
        members(directory("sub"), symlink("link", "sub"), file("link/evil")),
        "goes through the symlink 'link'",
    ),
    "symlink-then-directory-through": (
        members(symlink("link", "."), directory("link/d")),
        "goes through the symlink 'link'",
    ),
    "symlink-replacing-directory": (
        members(directory("d"), symlink("d", ".")),
        "a directory of that name",
    ),
    "file-then-child": (members(file("f"), file("f/child")), "goes through the file 'f'"),
    "file-over-directory": (members(directory("a"), file("a")), "a directory of that name"),
    "directory-over-file": (members(file("a"), directory("a")), "a non-directory of that name"),
    "file-named-root": (members(file(".")), "destination directory itself"),
    "hardlink-outside": (members(hardlink("h", "../../outside.txt")), "'..' is not allowed"),
    "hardlink-absolute": (
        lambda root: targz([hardlink("h", f"{root}/outside.txt")]),
        "absolute paths",
    ),
    "hardlink-not-yet-extracted": (
        members(hardlink("h", "later"), file("later")),
        "not a regular file extracted earlier",
    ),
    "hardlink-to-symlink": (
        members(file("f"), symlink("l", "f"), hardlink("h", "l")),
        "not a regular file extracted earlier",
    ),
    "hardlink-to-directory": (
        members(directory("d"), hardlink("h", "d")),
        "not a regular file extracted earlier",
    ),
    "char-device": (members(Member("tty", kind=tarfile.CHRTYPE)), "character devices"),
    "block-device": (members(Member("sda", kind=tarfile.BLKTYPE)), "block devices"),
    "fifo": (members(Member("pipe", kind=tarfile.FIFOTYPE)), "FIFOs"),
    "sparse": (
        lambda root: gzip.compress(header("sparse", b"S") + END),
        "sparse files are not supported",
    ),
    "unknown-type": (
        lambda root: gzip.compress(header("odd", b"Z") + END),
        "unsupported member type 'Z'",
    ),
    "pax-path-escape": (
        lambda root: gzip.compress(
            header("pax", b"x", len(pax_record("path", "../../evil")))
            + padded(pax_record("path", "../../evil"))
            + header("benign", b"0")
            + END
        ),
        "'..' is not allowed",
    ),
    "pax-sparse": (
        lambda root: gzip.compress(
            header("pax", b"x", len(pax_record("GNU.sparse.major", "1")))
            + padded(pax_record("GNU.sparse.major", "1"))
            + header("holes", b"0")
            + END
        ),
        "unsafe member 'holes': sparse files are not supported",
    ),
    "pax-malformed": (
        lambda root: gzip.compress(header("pax", b"x", 9) + padded(b"garbage\n\n") + END),
        "malformed pax header",
    ),
    "gnu-long-name-escape": (
        lambda root: gzip.compress(
            header("././@LongLink", b"L", 132)
            + padded(b"../" + b"a" * 128 + b"\0")
            + header("benign", b"0")
            + END
        ),
        "'..' is not allowed",
    ),
    "name-too-long": (members(file("x" * 300)), "too long"),
    "corrupt-header": (
        lambda root: gzip.compress(
            tar_bytes([file("ok")])[:512] + bytes(512) + header("x", b"0")[:-1] + b"!" + END
        ),
        "bad checksum",
    ),
}


@pytest.mark.parametrize("case", HOSTILE, ids=list(HOSTILE))
def test_hostile_archive_is_refused(sandbox: Sandbox, case: str) -> None:
    build, message = HOSTILE[case]
    with pytest.raises(ExtractError, match=message):
        extract(build(sandbox.root), sandbox.dest)


@pytest.mark.parametrize("case", HOSTILE, ids=list(HOSTILE))
def test_check_archive_refuses_the_same_archives(sandbox: Sandbox, case: str) -> None:
    build, message = HOSTILE[case]
    with pytest.raises(ExtractError, match=message):
        check(build(sandbox.root), sandbox.root.parent)


def test_error_names_the_member(sandbox: Sandbox) -> None:
    with pytest.raises(ExtractError, match=r"unsafe member '\.\./x'"):
        extract(targz([file("ok"), file("../x")]), sandbox.dest)


# -- corrupt, truncated and foreign data -------------------------------------------------------


def sample_archive() -> bytes:
    rng = random.Random(7)
    return targz([file(f"f{i}", rng.randbytes(20_000)) for i in range(10)])


def test_corrupt_gzip_data(sandbox: Sandbox) -> None:
    data = bytearray(sample_archive())
    middle = len(data) // 2
    data[middle : middle + 4] = bytes(b ^ 0xFF for b in data[middle : middle + 4])
    with pytest.raises(ExtractError, match="corrupt gzip data"):
        extract(bytes(data), sandbox.dest)
    with pytest.raises(ExtractError, match="corrupt gzip data"):
        check(bytes(data), sandbox.root.parent)


def test_corrupt_deflate_stream_is_an_extract_error(sandbox: Sandbox) -> None:
    data = bytearray(targz([file(f"f{i}", b"compressible text " * 500) for i in range(10)]))
    for offset in range(20, len(data) - 10, 97):
        data[offset] ^= 0x55
    with pytest.raises(ExtractError, match="corrupt"):
        extract(bytes(data), sandbox.dest)


@pytest.mark.parametrize("fraction", [0.0, 0.001, 0.1, 0.5, 0.9, 0.999])
def test_truncated_stream(sandbox: Sandbox, fraction: float) -> None:
    data = sample_archive()
    cut = data[: int(len(data) * fraction)]
    with pytest.raises(ExtractError, match="truncated archive"):
        extract(cut, sandbox.dest)
    with pytest.raises(ExtractError, match="truncated archive"):
        check(cut, sandbox.root.parent)


@pytest.mark.parametrize("missing", [1, 4, 8, 9])
def test_truncated_gzip_trailer(sandbox: Sandbox, missing: int) -> None:
    with pytest.raises(ExtractError, match="truncated archive"):
        extract(sample_archive()[:-missing], sandbox.dest)


# Inside the first member's data, exactly after the first member, inside the second.
@pytest.mark.parametrize("keep", [600, 512 + 20_480, 2 * (512 + 20_480) - 100])
def test_truncated_tar_inside_valid_gzip(sandbox: Sandbox, keep: int) -> None:
    raw = tar_bytes([file(f"f{i}", bytes(20_000)) for i in range(4)])
    with pytest.raises(ExtractError, match="truncated archive"):
        extract(gzip.compress(raw[:keep]), sandbox.dest)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"just some text, not gzip at all\n" * 10, "not a gzip archive"),
        (tar_bytes([file("f")]), "not a gzip archive"),
        (gzip.compress(b"hello world " * 1000), "not a tar archive"),
        (gzip.compress(b"tiny"), "not a tar archive"),
        (gzip.compress(b""), "not a tar archive"),
        (targz([file("f")]) + b"trailing garbage", "corrupt gzip data: garbage"),
    ],
    ids=["text", "plain-tar", "gzip-of-text", "gzip-of-tiny", "gzip-of-nothing", "trailing"],
)
def test_foreign_data(sandbox: Sandbox, data: bytes, message: str) -> None:
    with pytest.raises(ExtractError, match=message):
        extract(data, sandbox.dest)
    with pytest.raises(ExtractError, match=message):
        check(data, sandbox.root.parent)


def test_stdlib_zlib_fallback(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where isal is not installed, zlib inflates with the same results and messages."""
    monkeypatch.setattr(extract_module, "_new_gunzipper", lambda: zlib.decompressobj(wbits=31))
    monkeypatch.setattr(extract_module, "_INFLATE_ERRORS", (zlib.error,))
    raw = tar_bytes([file("a", b"a" * 3000), file("b", b"b")])
    extract(gzip.compress(raw[:1500]) + gzip.compress(raw[1500:]), sandbox.dest)
    assert tree(sandbox.dest) == {"a": "a" * 3000, "b": "b"}
    data = sample_archive()
    with pytest.raises(ExtractError, match="truncated archive"):
        check(data[: len(data) // 2], sandbox.root.parent)
    corrupt = bytearray(data)
    corrupt[len(data) // 2] ^= 0xFF
    with pytest.raises(ExtractError, match="corrupt gzip data"):
        check(bytes(corrupt), sandbox.root.parent)


@pytest.fixture(params=["isal", "zlib"])
def inflater(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each test using it runs with the default inflater (isal's) and with zlib's fallback."""
    if request.param == "zlib":
        monkeypatch.setattr(extract_module, "_new_gunzipper", lambda: zlib.decompressobj(wbits=31))
        monkeypatch.setattr(extract_module, "_INFLATE_ERRORS", (zlib.error,))
    return str(request.param)


@pytest.mark.parametrize("chunk_size", [7, 4096, 1 << 20])
def test_output_pending_past_each_step_is_all_delivered(
    sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch, inflater: str, chunk_size: int
) -> None:
    # Steps far smaller than what one chunk inflates to, so most of each chunk comes out
    # over several further steps, across a gzip member boundary too.
    monkeypatch.setattr(extract_module, "_INFLATE_STEP", 1000)
    noise = random.Random(5).randbytes(30_000)
    raw = tar_bytes([file("zeros", bytes(300_000)), file("noise", noise)])
    data = gzip.compress(raw[:150_000]) + gzip.compress(raw[150_000:])
    extract(data, sandbox.dest, chunk_size=chunk_size)
    assert (sandbox.dest / "zeros").read_bytes() == bytes(300_000)
    assert (sandbox.dest / "noise").read_bytes() == noise


@pytest.mark.parametrize("offset", [-8, -5, -4, -1], ids=["crc", "crc-high", "size", "size-high"])
def test_a_wrong_gzip_trailer_is_refused(sandbox: Sandbox, inflater: str, offset: int) -> None:
    data = bytearray(targz([file("f", b"payload " * 1000)]))
    data[offset] ^= 0x01
    with pytest.raises(ExtractError, match="corrupt gzip data"):
        extract(bytes(data), sandbox.dest)


# -- the safety rules on their own -------------------------------------------------------------
# The hostile archives above go through the whole extractor; these ask the rules directly.


@pytest.mark.parametrize(
    ("path", "expected"),
    [("a", "a"), ("./a//b/.", "a/b"), (".", ""), ("", ""), ("a/./b/", "a/b")],
)
def test_normalise_drops_dots_and_empty_components(path: str, expected: str) -> None:
    assert safety.normalise("member", path) == expected


@given(
    st.lists(st.sampled_from(["", ".", "..", "a", ".a", "a.", "..a", "b c", "é"]), max_size=6),
    st.booleans(),
)
def test_normalise_agrees_with_its_definition(parts: list[str], absolute: bool) -> None:
    # Normal paths take a short cut; whichever way, the answer is the same.
    path = ("/" if absolute else "") + "/".join(parts)
    kept = [part for part in path.split("/") if part and part != "."]
    if path.startswith("/") or ".." in kept:
        with pytest.raises(ExtractError):
            safety.normalise("member", path)
    else:
        assert safety.normalise("member", path) == "/".join(kept)


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/etc/passwd", "absolute paths"),
        ("a/../../b", "'..' is not allowed"),
        ("..", "'..' is not allowed"),
        ("x" * 256, "the path is too long"),
        ("/".join(["d" * 200] * 21), "the path is too long"),
        ("é" * 128, "the path is too long"),  # 128 characters, 256 bytes
    ],
)
def test_normalise_refuses_what_escapes_or_cannot_exist(path: str, message: str) -> None:
    with pytest.raises(ExtractError, match=f"unsafe member 'member': {message}"):
        safety.normalise("member", path)


@pytest.mark.parametrize(
    ("path", "target"),
    [("l", "a"), ("l", "."), ("a/l", ".."), ("a/b/l", "../../c/d"), ("a/l", "./../x/./y")],
)
def test_symlink_targets_that_stay_inside(path: str, target: str) -> None:
    safety.check_symlink_target(path, path, target)


@pytest.mark.parametrize(
    ("path", "target", "message"),
    [
        ("l", "", "target is empty"),
        ("l", "/", "is absolute"),
        ("l", "..", "points outside"),
        ("a/b/l", "../../..", "points outside"),
        ("a/l", "b/..", "'..' after a name"),
        ("a/l", "../b/../..", "'..' after a name"),
    ],
)
def test_symlink_targets_that_could_leave(path: str, target: str, message: str) -> None:
    with pytest.raises(ExtractError, match=message):
        safety.check_symlink_target(path, path, target)


def test_tree_creates_missing_parents_once_and_counts_them() -> None:
    tree = safety.Tree()
    assert tree.admit(safety.FILE, "a/b/f", "") == safety.Verdict("a/b/f", ["a", "a/b"], False, "")
    assert tree.admit(safety.FILE, "a/b/g", "") == safety.Verdict("a/b/g", [], False, "")
    assert tree.admit(safety.DIR, "./a/c", "") == safety.Verdict("a/c", ["a/c"], False, "")
    assert tree.admit(safety.DIR, "a", "") == safety.Verdict("a", [], False, "")
    assert tree.admit(safety.DIR, ".", "") == safety.Verdict("", [], False, "")
    assert tree.directories == 3


def test_tree_replaces_files_and_links_but_never_writes_through_them() -> None:
    tree = safety.Tree()
    tree.admit(safety.FILE, "f", "")
    assert tree.admit(safety.LINK, "f", "g").replaces
    assert tree.admit(safety.FILE, "f", "").replaces
    assert tree.admit(safety.HARDLINK, "h", "f") == safety.Verdict("h", [], False, "f")
    with pytest.raises(ExtractError, match="goes through the file 'f'"):
        tree.admit(safety.FILE, "f/x", "")
    tree.admit(safety.LINK, "l", ".")
    with pytest.raises(ExtractError, match="goes through the symlink 'l'"):
        tree.admit(safety.DIR, "l/d", "")


@pytest.mark.parametrize(
    ("earlier", "kind", "message"),
    [
        (safety.DIR, safety.FILE, "a directory of that name"),
        (safety.DIR, safety.LINK, "a directory of that name"),
        (safety.FILE, safety.DIR, "a non-directory of that name"),
        (safety.LINK, safety.HARDLINK, "not a regular file extracted earlier"),
        (safety.DIR, safety.HARDLINK, "not a regular file extracted earlier"),
    ],
)
def test_tree_refuses_a_change_of_kind(earlier: str, kind: str, message: str) -> None:
    tree = safety.Tree()
    tree.admit(earlier, "x", "." if earlier == safety.LINK else "")
    name, link = ("h", "x") if kind == safety.HARDLINK else ("x", "y")
    with pytest.raises(ExtractError, match=message):
        tree.admit(kind, name, link)


def test_a_file_cannot_be_the_destination_itself() -> None:
    with pytest.raises(ExtractError, match="destination directory itself"):
        safety.Tree().admit(safety.FILE, "./", "")


@pytest.mark.parametrize(
    ("typeflag", "message"),
    [
        (b"3", "character devices are not allowed"),
        (b"4", "block devices are not allowed"),
        (b"6", "FIFOs are not allowed"),
        (b"S", "sparse files are not supported"),
        (b"Z", "unsupported member type 'Z'"),
    ],
)
def test_refused_member_types_say_why(typeflag: bytes, message: str) -> None:
    assert str(safety.refused_type("m", typeflag[0])) == f"unsafe member 'm': {message}"


def test_pax_records_for_sparse_files_are_refused() -> None:
    safety.check_pax_records("m", {"path": "m", "mtime": "1.5"})
    with pytest.raises(ExtractError, match="sparse files are not supported"):
        safety.check_pax_records("m", {"GNU.sparse.map": "0,0"})


def test_special_mode_bits_are_not_admitted() -> None:
    assert 0o7777 & safety.MODE_MASK == 0o777


# -- property: whatever the members, nothing escapes ---------------------------------------------

NAMES = ["a", "b", "c"]
KINDS = ["file", "dir", "symlink", "hardlink"]


@st.composite
def archives(draw: st.DrawFn) -> list[tuple[str, str, str]]:
    """Members as (kind, name, link); half the archives stick to names that could be valid."""
    hostile = draw(st.booleans())
    components = st.sampled_from(NAMES * 3 + [".", ""] + ([".."] * 2 if hostile else []))

    def path() -> str:
        parts = draw(st.lists(components, max_size=3))
        if hostile:
            absolute = draw(st.integers(0, 9)) == 0
            return ("/" if absolute else "") + "/".join([*parts, draw(components)])
        return "/".join([*parts, draw(st.sampled_from(NAMES))])

    specs: list[tuple[str, str, str]] = []
    for _ in range(draw(st.integers(0, 8))):
        kind = draw(st.sampled_from(KINDS))
        link = ""
        if kind == "symlink":
            link = path() if hostile else "../" * draw(st.integers(0, 2)) + path()
        elif kind == "hardlink":
            earlier = [name for _, name, _ in specs]
            pick_earlier = earlier and (not hostile or draw(st.booleans()))
            link = draw(st.sampled_from(earlier)) if pick_earlier else path()
        specs.append((kind, path(), link))
    return specs


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(specs=archives())
def test_no_archive_writes_outside_dest(specs: list[tuple[str, str, str]]) -> None:
    with tempfile.TemporaryDirectory() as base:
        box = make_sandbox(Path(base))
        before = box.snapshot()

        def aim(path: str) -> str:
            # Absolute names point into the sandbox, where an escape would be seen.
            return f"{box.root}{path}" if path.startswith("/") else path

        items = []
        for kind, name, link in specs:
            if kind == "file":
                items.append(file(aim(name), name.encode()))
            elif kind == "dir":
                items.append(directory(aim(name)))
            elif kind == "symlink":
                items.append(symlink(aim(name), aim(link)))
            else:
                items.append(hardlink(aim(name), aim(link)))
        data = targz(items)

        try:
            extract(data, box.dest)
            extracted: str | None = None
        except ExtractError as err:
            extracted = str(err)
        try:
            check(data, Path(base))
            checked: str | None = None
        except ExtractError as err:
            checked = str(err)

        event("refused" if extracted else "extracted")
        assert extracted == checked
        assert box.snapshot() == before
        assert_links_inside(box.dest)
