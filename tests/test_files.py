"""Atomic writes: modes, clean-up on failure, the rename, and what gets fsynced."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from daybook.files import fsync_directory, open_atomically, write_atomically


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def fsynced(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """What os.fsync is called on, as "file" or "dir", in order."""
    calls: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        calls.append("dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    return calls


def test_writes_the_data_owner_only_by_default(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    write_atomically(path, b"{}")
    assert path.read_bytes() == b"{}"
    assert mode_of(path) == 0o600


@pytest.mark.parametrize(
    ("mode", "umask", "expected"),
    [
        (0o644, 0o077, 0o644),
        (0o600, 0o077, 0o600),
        (0o640, 0o002, 0o640),
        # None: as open() creates a file, 0o666 less the umask.
        (None, 0o027, 0o640),
        (None, 0o022, 0o644),
    ],
)
def test_the_mode_is_exact_or_left_to_the_umask(
    tmp_path: Path, mode: int | None, umask: int, expected: int
) -> None:
    path = tmp_path / "file"
    saved = os.umask(umask)
    try:
        write_atomically(path, b"x", mode=mode)
    finally:
        os.umask(saved)
    assert mode_of(path) == expected


def test_a_secret_is_owner_only_before_a_byte_is_written(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    with open_atomically(path, mode=0o600) as file:
        assert stat.S_IMODE(os.fstat(file.fileno()).st_mode) == 0o600


def test_the_old_file_stays_whole_until_the_new_one_replaces_it(tmp_path: Path) -> None:
    path = tmp_path / "mappings.json"
    path.write_bytes(b"old")
    with open_atomically(path, mode=0o644) as file:
        file.write(b"new, ")
        assert path.read_bytes() == b"old"
        file.write(b"longer")
        assert path.read_bytes() == b"old"
    assert path.read_bytes() == b"new, longer"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mappings.json"]


def test_the_new_file_is_renamed_in_not_written_over(tmp_path: Path) -> None:
    path = tmp_path / "file"
    path.write_bytes(b"old")
    with path.open("rb") as reader:
        write_atomically(path, b"new")
        assert reader.read() == b"old"
    assert path.read_bytes() == b"new"


def test_a_failed_write_leaves_the_old_file_and_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "file"
    path.write_bytes(b"old")

    def write_half() -> None:
        with open_atomically(path) as file:
            file.write(b"half")
            raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        write_half()
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_a_failed_rename_removes_the_temp(tmp_path: Path) -> None:
    path = tmp_path / "taken"
    path.mkdir()
    (path / "inside").write_bytes(b"")  # a non-empty directory cannot be replaced
    with pytest.raises(OSError):  # noqa: PT011 - IsADirectoryError or OSError by platform
        write_atomically(path, b"data")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


def test_without_overwrite_the_first_writer_wins(tmp_path: Path) -> None:
    path = tmp_path / "key_secret"
    write_atomically(path, b"first", overwrite=False)
    with pytest.raises(FileExistsError):
        write_atomically(path, b"second", overwrite=False)
    assert path.read_bytes() == b"first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["key_secret"]


def test_the_temp_file_is_named_by_the_prefix_in_the_same_directory(tmp_path: Path) -> None:
    path = tmp_path / "asset.tar.gz"
    with open_atomically(path, prefix=".upload-") as file:
        (temp,) = tmp_path.iterdir()
        assert temp.name.startswith(".upload-")
        assert os.fstat(file.fileno()).st_ino == temp.stat().st_ino
    with open_atomically(path):
        (temp,) = (p for p in tmp_path.iterdir() if p != path)
        assert temp.name.startswith(".asset.tar.gz.")


def test_durable_fsyncs_the_file_before_the_rename(tmp_path: Path, fsynced: list[str]) -> None:
    write_atomically(tmp_path / "file", b"x")
    assert fsynced == ["file"]


def test_not_durable_fsyncs_nothing(tmp_path: Path, fsynced: list[str]) -> None:
    write_atomically(tmp_path / "file", b"x", durable=False)
    assert fsynced == []


def test_fsync_dir_fsyncs_the_directory_after_the_file(tmp_path: Path, fsynced: list[str]) -> None:
    write_atomically(tmp_path / "file", b"x", fsync_dir=True)
    assert fsynced == ["file", "dir"]


def test_a_failed_write_fsyncs_no_directory(tmp_path: Path, fsynced: list[str]) -> None:
    with pytest.raises(RuntimeError), open_atomically(tmp_path / "file", fsync_dir=True):
        raise RuntimeError("stop")
    assert fsynced == []


def test_fsync_directory(tmp_path: Path, fsynced: list[str]) -> None:
    fsync_directory(tmp_path)
    assert fsynced == ["dir"]
