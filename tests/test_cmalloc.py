"""glibc's malloc tuned for a process that extracts archives and ends (daybook.cmalloc)."""

from __future__ import annotations

import pytest
from malloc_probe import RecordingMallopt, mapped_blocks

from daybook.cmalloc import (
    HEAP_BLOCKS_BELOW_BYTES,
    HEAP_KEEPS_FREE_BYTES,
    M_MMAP_THRESHOLD,
    M_TRIM_THRESHOLD,
    keep_freed_blocks,
)


def test_large_blocks_come_from_the_heap_and_stay_there() -> None:
    mallopt = RecordingMallopt()
    assert keep_freed_blocks({}, mallopt)
    assert mallopt.calls == [
        (M_MMAP_THRESHOLD, HEAP_BLOCKS_BELOW_BYTES),
        (M_TRIM_THRESHOLD, HEAP_KEEPS_FREE_BYTES),
    ]


def test_an_operators_tunables_or_another_c_library_change_nothing() -> None:
    mallopt = RecordingMallopt()
    assert not keep_freed_blocks({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, mallopt)
    assert not keep_freed_blocks({"MALLOC_MMAP_THRESHOLD_": "65536"}, mallopt)
    # The trim threshold is one of the two set here; an operator's must stand.
    assert not keep_freed_blocks({"MALLOC_TRIM_THRESHOLD_": "131072"}, mallopt)
    assert not keep_freed_blocks({"MALLOC_TOP_PAD_": "0"}, mallopt)
    assert not keep_freed_blocks({}, None)  # not glibc
    assert mallopt.calls == []


def test_a_refused_setting_is_reported() -> None:
    assert not keep_freed_blocks({}, RecordingMallopt(result=0))


def test_megabyte_blocks_come_from_the_heap_in_a_real_process() -> None:
    """With glibc's defaults a 1 MiB block is mapped on pages of its own; kept in the heap,
    blocks follow one another."""
    mapped = mapped_blocks(
        "from daybook.cmalloc import keep_freed_blocks\nassert keep_freed_blocks({}, mallopt)",
        size=1 << 20,
        count=20,
    )
    if mapped is None:
        pytest.skip("not glibc: no mallopt")
    assert mapped["default"] == 20
    assert mapped["tuned"] <= 2
