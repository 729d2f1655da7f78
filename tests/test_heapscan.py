"""The bench's scan of a process's resident memory by glibc's layout (daybook_testing.heapscan)."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import struct
from collections.abc import Iterator

import pytest

from daybook_testing.heapscan import HEAP_MAX_BYTES, PAGE, _walk, scan

# Above glibc's largest dynamic mmap threshold (32 MiB): always a block of its own.
LARGE = 40 << 20


def _chunk_header(previous: int, size_and_flags: int) -> bytes:
    return struct.pack("=2Q", previous, size_and_flags)


class _Memory:
    """Pages of a made-up mapping; reading a page that is not resident fails the test."""

    def __init__(self, start: int, pages: dict[int, bytes], count: int) -> None:
        self.start = start
        self.pages = pages
        self.present = [index in pages for index in range(count)]

    def read(self, address: int, size: int) -> bytes:
        index, offset = divmod(address - self.start, PAGE)
        assert index in self.pages, f"read page {index}, which is not resident"
        return self.pages[index][offset : offset + size]


def _kinds(memory: _Memory) -> Iterator[tuple[str, int, int]]:
    return _walk(memory.start, memory.present, memory.read)


def test_a_large_block_counts_only_the_pages_written() -> None:
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    block = libc.malloc(LARGE)
    assert block
    try:
        for page in (0, 10, 20):
            ctypes.memset(block + page * PAGE, 1, 8)
        found = [kind for kind in scan(os.getpid()).blocks if kind.size >= LARGE]
    finally:
        libc.free(block)
    # The header and the user's data share the first page.
    assert [(kind.count, kind.resident_bytes) for kind in found] == [(1, 3 * PAGE)]


def test_an_arena_heap_a_block_and_the_rest_are_told_apart() -> None:
    arena_heap = struct.pack("=4Q", 0x7F00_0000_1000, 0, 4 * PAGE, 4 * PAGE)
    pages = {
        0: arena_heap.ljust(PAGE, b"\0"),
        2: b"\0" * PAGE,  # inside the heap, resident
        # After the heap: a block of 3 pages, its middle page never written...
        4: _chunk_header(0, 3 * PAGE | 0x2).ljust(PAGE, b"\0"),
        6: b"\0" * PAGE,
        # ...then a page that starts no block (Python's, a stack's).
        7: b"\xff" * PAGE,
    }
    memory = _Memory(HEAP_MAX_BYTES * 3, pages, count=9)
    assert list(_kinds(memory)) == [
        ("arena", 4 * PAGE, 2),
        ("block", 3 * PAGE, 2),
        ("other", PAGE, 1),
    ]


@pytest.mark.parametrize(
    "header",
    [
        _chunk_header(0, 2 * PAGE | 0x1),  # a chunk in an arena, not mapped
        _chunk_header(0, 2 * PAGE | 0x4 | 0x2),  # flagged as a thread arena's too
        _chunk_header(16, 2 * PAGE | 0x2),  # an aligned block's offset: not a page start
        _chunk_header(0, 2 * PAGE + 16 | 0x2),  # not a whole number of pages
        _chunk_header(0, 64 * PAGE | 0x2),  # longer than the mapping
    ],
)
def test_what_is_not_a_block_header_counts_as_other(header: bytes) -> None:
    memory = _Memory(PAGE * 5, {0: header.ljust(PAGE, b"\0"), 1: b"\0" * PAGE}, count=2)
    assert [kind for kind, _span, _pages in _kinds(memory)] == ["other", "other"]


def test_a_heap_info_only_counts_at_the_heaps_alignment() -> None:
    arena_heap = struct.pack("=4Q", 0x7F00_0000_1000, 0, 2 * PAGE, 2 * PAGE)
    memory = _Memory(HEAP_MAX_BYTES + PAGE, {0: arena_heap.ljust(PAGE, b"\0")}, count=2)
    assert list(_kinds(memory)) == [("other", PAGE, 1)]
