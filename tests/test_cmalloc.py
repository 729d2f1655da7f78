"""glibc's malloc tuned for a process that extracts archives and ends (daybook.cmalloc)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from daybook.cmalloc import (
    HEAP_BLOCKS_BELOW_BYTES,
    HEAP_KEEPS_FREE_BYTES,
    M_MMAP_THRESHOLD,
    M_TRIM_THRESHOLD,
    keep_freed_blocks,
)


def test_large_blocks_come_from_the_heap_and_stay_there() -> None:
    calls: list[tuple[int, int]] = []

    def mallopt(param: int, value: int) -> int:
        calls.append((param, value))
        return 1

    assert keep_freed_blocks({}, mallopt)
    assert calls == [
        (M_MMAP_THRESHOLD, HEAP_BLOCKS_BELOW_BYTES),
        (M_TRIM_THRESHOLD, HEAP_KEEPS_FREE_BYTES),
    ]


def test_an_operators_tunables_or_another_c_library_change_nothing() -> None:
    calls: list[tuple[int, int]] = []

    def mallopt(param: int, value: int) -> int:
        calls.append((param, value))
        return 1

    assert not keep_freed_blocks({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, mallopt)
    assert not keep_freed_blocks({"MALLOC_MMAP_THRESHOLD_": "65536"}, mallopt)
    assert not keep_freed_blocks({}, None)  # not glibc
    assert calls == []


def test_a_refused_setting_is_reported() -> None:
    assert not keep_freed_blocks({}, lambda _param, _value: 0)


def test_megabyte_blocks_come_from_the_heap_in_a_real_process() -> None:
    """With glibc's defaults a 1 MiB block is mapped on pages of its own, 16 bytes into its
    first page; kept in the heap, blocks follow one another."""
    code = (
        "import ctypes, sys\n"
        "from daybook.cmalloc import find_mallopt, keep_freed_blocks\n"
        "mallopt = find_mallopt()\n"
        "if mallopt is None: sys.exit(0)\n"
        "if sys.argv[1] == 'kept': assert keep_freed_blocks({}, mallopt)\n"
        "libc = ctypes.CDLL(None)\n"
        "libc.malloc.restype = ctypes.c_void_p\n"
        "blocks = [libc.malloc(1 << 20) for _ in range(20)]\n"
        "print(sum(block % 4096 == 16 for block in blocks))\n"
    )
    mapped = {
        how: int(
            subprocess.run(
                [sys.executable, "-c", code, how], check=True, capture_output=True, text=True
            ).stdout
            or 0
        )
        for how in ("default", "kept")
    }
    if mapped["default"] == 0:
        pytest.skip("not glibc: no mallopt")
    assert mapped["default"] == 20
    assert mapped["kept"] <= 2
