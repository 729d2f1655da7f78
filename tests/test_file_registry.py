"""The embedded mappings file: what it tolerates on disk and how it writes."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from daybook.errors import ConfigError
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
