"""The embedded mappings file: what it tolerates on disk and how it writes."""

from __future__ import annotations

import json
import logging
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from daybook.errors import ConfigError, RegistryError
from daybook.registry.file import FileRegistry


def test_invalid_entries_on_disk_are_skipped_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "mappings.json"
    hosts = {"web-*": ["a", "bad-name", " a ", "b"], "web-?": ["x"], "db-*": 5, "Mixed-*": "c, d"}
    path.write_text(json.dumps({"format": 1, "generation": 3, "hosts": hosts}))
    with caplog.at_level(logging.WARNING):
        snapshot = FileRegistry(path).read()
    assert snapshot.mappings == {"web-*": ("a", "b"), "mixed-*": ("c", "d")}
    assert snapshot.index == 3
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "bad-name" in messages
    assert "web-?" in messages
    assert "db-*" in messages


def test_corrupt_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "mappings.json"
    path.write_text("{not json")
    with pytest.raises(ConfigError, match=r"mappings\.json is not valid JSON"):
        FileRegistry(path).read()


def test_writes_are_atomic_and_leave_no_temporary_files(tmp_path: Path) -> None:
    path = tmp_path / "mappings.json"
    registry = FileRegistry(path)
    registry.update("web-*", lambda _: ("a",))
    registry.update("db-*", lambda _: ("b",))
    document = json.loads(path.read_text())
    assert document["hosts"] == {"db-*": ["b"], "web-*": ["a"]}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mappings.json", "mappings.json.lock"]
    assert path.stat().st_mode & 0o777 == 0o644


def test_a_hand_edit_wakes_a_watcher(tmp_path: Path) -> None:
    import threading

    path = tmp_path / "mappings.json"
    registry = FileRegistry(path, poll_interval_s=0.05)
    registry.update("web-*", lambda _: ("a",))
    index = registry.read().index
    results = []
    watcher = threading.Thread(target=lambda: results.append(registry.watch(index, 20)))
    watcher.start()
    # An editor that keeps the generation number still changes the file.
    path.write_text(json.dumps({"generation": index, "hosts": {"web-*": ["b"]}}))
    watcher.join(timeout=20)
    assert results
    assert results[0].mappings == {"web-*": ("b",)}


def test_a_mappings_path_under_a_file_is_one_clear_error(tmp_path: Path) -> None:
    """Not a traceback: a data dir mistyped onto a file reads and writes as RegistryError."""
    (tmp_path / "data").write_text("a file, not a directory")
    registry = FileRegistry(tmp_path / "data" / "mappings.json")
    with pytest.raises(RegistryError, match=r"cannot read mappings file .*: Not a directory"):
        registry.read()
    with pytest.raises(RegistryError, match=r"cannot lock .*/data is not a directory"):
        registry.update("web-*", lambda _: ("a",))


def test_a_write_the_disk_refuses_is_one_line_and_changes_nothing(tmp_path: Path) -> None:
    """`map add` with a file-size limit of 0 (what a full disk looks like to the writer):
    exit 1, one line naming the file, the mappings as they were, no temporary file left."""
    path = tmp_path / "mappings.json"
    FileRegistry(path).update("db-*", lambda _: ("b",))
    before = path.read_bytes()
    env = {**os.environ, "DAYBOOK_DATA_DIR": str(tmp_path), "DAYBOOK_REGISTRY": f"file://{path}"}
    env.pop("DAYBOOK_CONFIG", None)
    done = subprocess.run(
        [sys.executable, "-m", "daybook", "map", "add", "web-*", "a"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0)),
    )
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        f"daybook: cannot write mappings file {path}: File too large"
    ]
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mappings.json", "mappings.json.lock"]
