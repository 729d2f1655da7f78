"""Removing version trees: directories an archive left read-only or closed still go."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest
from unprivileged import run_unprivileged

from daybook.install.removal import open_up_tree, remove_tree


def mode_of(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def locked_tree(root: Path) -> Path:
    """A tree as an archive may leave it: a read-only directory holding a closed one."""
    tree = root / "tree"
    (tree / "ro" / "closed").mkdir(parents=True)
    (tree / "ro" / "closed" / "data").write_text("x\n")
    (tree / "ro" / "file").write_text("x\n")
    os.chmod(tree / "ro" / "file", 0o444)
    os.chmod(tree / "ro" / "closed", 0o000)
    os.chmod(tree / "ro", 0o500)
    return tree


def test_opening_up_gives_each_directory_its_owner_rwx_and_nothing_else(tmp_path: Path) -> None:
    tree = locked_tree(tmp_path)
    open_up_tree(tree)
    assert mode_of(tree / "ro") == 0o700
    assert mode_of(tree / "ro" / "closed") == 0o700
    assert mode_of(tree / "ro" / "file") == 0o444  # files need no bits to be unlinked


def test_opening_up_never_follows_a_symlink_out_of_the_tree(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir(mode=0o500)
    tree = locked_tree(tmp_path)
    os.chmod(tree / "ro", 0o700)
    os.symlink(outside, tree / "ro" / "link")
    os.chmod(tree / "ro", 0o500)
    open_up_tree(tree)
    assert mode_of(outside) == 0o500
    os.chmod(outside, 0o700)


def test_a_tree_with_read_only_and_closed_directories_is_removed_without_root(
    tmp_path: Path,
) -> None:
    tree = locked_tree(tmp_path)
    child = run_unprivileged(
        "import sys\n"
        "from pathlib import Path\n"
        "from daybook.install.removal import remove_tree\n"
        "remove_tree(Path(sys.argv[1]))\n",
        str(tree),
    )
    assert child.returncode == 0, child.stderr
    assert not tree.exists()


def test_a_tree_that_will_not_go_raises_and_its_parent_keeps_its_mode(tmp_path: Path) -> None:
    # The tree's own directories open up, but the read-only directory holding it is not the
    # tree's: it keeps its mode, and the tree's root cannot be unlinked from it.
    parent = tmp_path / "parent"
    parent.mkdir()
    tree = locked_tree(parent)
    os.chmod(parent, 0o500)
    child = run_unprivileged(
        "import sys\n"
        "from pathlib import Path\n"
        "from daybook.install.removal import remove_tree\n"
        "try:\n"
        "    remove_tree(Path(sys.argv[1]))\n"
        "except PermissionError as exc:\n"
        "    print(exc.filename)\n",
        str(tree),
    )
    assert child.returncode == 0, child.stderr
    assert child.stdout.strip() == str(tree)
    assert mode_of(parent) == 0o500
    assert tree.is_dir()
    assert not (tree / "ro").exists()  # everything inside it went
    os.chmod(parent, 0o700)


def test_an_ordinary_tree_is_removed(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "a" / "b").mkdir(parents=True)
    (tree / "a" / "b" / "f").write_text("x\n")
    remove_tree(tree)
    assert not tree.exists()


def test_a_file_that_will_not_go_is_named_by_its_full_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tree = tmp_path / "tree"
    (tree / "a").mkdir(parents=True)
    (tree / "a" / "stuck").write_text("x\n")
    unlink = os.unlink

    def immutable(path: str, *, dir_fd: int | None = None) -> None:
        if path == "stuck":  # as `chattr +i` would make it
            raise PermissionError(errno.EPERM, "Operation not permitted", path)
        unlink(path, dir_fd=dir_fd)

    monkeypatch.setattr(os, "unlink", immutable)
    with pytest.raises(PermissionError) as raised:
        remove_tree(tree)
    assert raised.value.filename == str(tree / "a" / "stuck")
