"""The housekeeper's timers: freed memory goes back to the OS on its own schedule."""

from __future__ import annotations

from pathlib import Path

import pytest
from malloc_probe import RecordingMallopt, mapped_blocks

from master.database import ResultsDatabase
from master.heap import (
    DEFAULT_MAX_MAP_COUNT,
    M_MMAP_MAX,
    M_MMAP_THRESHOLD,
    MMAP_MAX,
    MMAP_THRESHOLD_BYTES,
    MappedBlocks,
    count_mappings,
    find_trim,
    max_map_count,
    tune_allocator,
)
from master.housekeeping import HEAP_TRIM, Housekeeper
from master.ledger import Fleet
from master.scheduler import Scheduler
from master.tuning import MasterTuning


def test_freed_memory_is_handed_back_on_the_heap_trim_timer(tmp_path: Path) -> None:
    trims: list[None] = []
    scheduler = Scheduler()
    database = ResultsDatabase(tmp_path / "master.db")
    try:
        keeper = Housekeeper(
            database=database,
            fleet=Fleet(15.0),
            scheduler=scheduler,
            tuning=MasterTuning(heap_trim_interval_s=30.0),
            trim=lambda: trims.append(None),
        )
        scheduler.add(HEAP_TRIM, keeper.release_memory, due=100.0)
        scheduler.run_due(99.0)
        assert trims == []
        scheduler.run_due(100.0)
        assert trims == [None]
        assert scheduler.due(HEAP_TRIM) == 130.0
        scheduler.run_due(129.0)
        assert len(trims) == 1
    finally:
        database.close()


def test_the_trim_runs_where_the_c_library_has_one() -> None:
    find_trim()()  # glibc's malloc_trim, or nothing; never an error


def test_blocks_of_a_connections_size_get_pages_of_their_own() -> None:
    calls: list[tuple[int, int]] = []

    def mallopt(parameter: int, value: int) -> int:
        calls.append((parameter, value))
        return 1

    assert isinstance(tune_allocator({}, mallopt), MappedBlocks)
    assert calls == [(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES), (M_MMAP_MAX, MMAP_MAX)]


def test_blocks_stop_being_mapped_at_half_the_kernels_mappings_and_resume_below_two_fifths(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls: list[tuple[int, int]] = []
    mappings = [1000]

    def mallopt(parameter: int, value: int) -> int:
        calls.append((parameter, value))
        return 1

    blocks = MappedBlocks(mallopt, limit=10_000, count=lambda: mappings[0])
    blocks.check()
    assert blocks.mapping
    assert calls == []
    mappings[0] = 5000
    blocks.check()
    assert not blocks.mapping
    assert calls == [(M_MMAP_MAX, 0)]
    assert "5000 memory mappings, half the kernel's limit" in caplog.text
    mappings[0] = 4500  # between the two shares: no flapping
    blocks.check()
    blocks.check()
    assert calls == [(M_MMAP_MAX, 0)]
    mappings[0] = 4000
    blocks.check()
    assert blocks.mapping
    assert calls == [(M_MMAP_MAX, 0), (M_MMAP_MAX, MMAP_MAX)]


def test_the_trim_timer_keeps_the_blocks_within_the_kernels_mappings() -> None:
    counted: list[None] = []

    def count() -> int:
        counted.append(None)
        return 0

    find_trim(MappedBlocks(lambda _parameter, _value: 1, limit=100, count=count))()
    assert counted == [None]


def test_the_mappings_are_counted_and_limited_as_the_kernel_says(tmp_path: Path) -> None:
    maps = Path("/proc/self/maps")
    if not maps.exists():
        pytest.skip("no /proc")
    assert abs(count_mappings() - len(maps.read_text().splitlines())) < 10
    limit = tmp_path / "max_map_count"
    limit.write_text("262144\n")
    assert max_map_count(limit) == 262_144
    limit.write_text("")
    assert max_map_count(limit) == DEFAULT_MAX_MAP_COUNT
    assert max_map_count(tmp_path / "absent") == DEFAULT_MAX_MAP_COUNT


def test_an_operators_malloc_tunables_are_left_alone() -> None:
    mallopt = RecordingMallopt()
    assert not tune_allocator({"MALLOC_MMAP_THRESHOLD_": "65536"}, mallopt)
    assert not tune_allocator({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, mallopt)
    assert not tune_allocator({}, None)  # not glibc
    assert mallopt.calls == []


def test_the_threshold_holds_in_a_real_process() -> None:
    """With glibc, 16 KB blocks are then mapped on their own pages (once the heap's free
    top is used up)."""
    counts = mapped_blocks(
        "from master.heap import tune_allocator\nassert tune_allocator({}, mallopt)",
        size=16 * 1024,
        count=2000,
    )
    if counts is None:
        pytest.skip("not glibc: no mallopt")
    assert counts["tuned"] > 1500
    assert counts["default"] < 500
