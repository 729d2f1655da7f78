"""Where a process's resident memory sits, as glibc's allocator laid it out: the heaps of
its threads' arenas, the blocks it mapped on pages of their own (by size), and the rest.

RSS says how much; this says what for. A master's memory is mostly libzmq's, a few blocks
of 8-20 KB per connection that glibc maps on their own pages (see master.heap), of which
only the pages written count, and the small objects in the I/O thread's arena. When a large
block is carved from free space in an arena instead of being mapped, it counts in full:
the split between the two is what this measures.

Read from /proc/PID/maps, /proc/PID/pagemap (which pages are resident) and /proc/PID/mem
(the allocator's headers, read only on resident pages, so the scan maps in nothing), by a
process allowed to trace PID: its parent or root.
"""

from __future__ import annotations

import os
import struct
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

PAGE = os.sysconf("SC_PAGE_SIZE")
# glibc keeps a thread arena in heaps of HEAP_MAX_SIZE (64 MB on 64-bit), each aligned to
# its size and starting with a heap_info: the arena, the previous heap, the size in use.
HEAP_MAX_BYTES = 64 << 20
_HEAP_INFO = struct.Struct("=4Q")
# A chunk's header: the previous chunk's size (0 before a mapped block) and its own size,
# whose low bits are flags.
_CHUNK_HEADER = struct.Struct("=2Q")
_FLAG_BITS = 0x7
_IS_MMAPPED = 0x2
_PRESENT_BIT = 1 << 63

# Reads `size` bytes of the process's memory at an address.
Reader = Callable[[int, int], bytes]


@dataclass(frozen=True)
class MappedBlocks:
    """Blocks glibc mapped on pages of their own, of one size."""

    # Bytes mapped for each, header and rounding to pages included.
    size: int
    count: int
    resident_bytes: int


@dataclass(frozen=True)
class HeapScan:
    """A process's resident anonymous memory, by what holds it."""

    # Heaps of the arenas glibc makes for threads (libzmq's I/O thread's among them).
    arena_bytes: int
    # The main arena, grown with brk: the `[heap]` mapping.
    main_heap_bytes: int
    # Largest resident total first.
    blocks: tuple[MappedBlocks, ...]
    # Every other private anonymous page: Python's own arenas, thread stacks, and memory
    # libraries map themselves.
    other_bytes: int
    # All the process's mappings, of every kind: the kernel allows vm.max_map_count.
    mappings: int

    @property
    def mapped_bytes(self) -> int:
        return sum(kind.resident_bytes for kind in self.blocks)


def scan(pid: int) -> HeapScan:
    """Walk every private, writable, anonymous mapping of `pid` (OSError if /proc refuses)."""
    # One read of the maps, for the walk and the count alike.
    with open(f"/proc/{pid}/maps") as maps:
        lines = maps.readlines()
    arena = main_heap = other = 0
    counts: Counter[int] = Counter()
    resident: Counter[int] = Counter()
    with (
        open(f"/proc/{pid}/pagemap", "rb", buffering=0) as pagemap,
        open(f"/proc/{pid}/mem", "rb", buffering=0) as memory,
    ):

        def read(address: int, size: int) -> bytes:
            memory.seek(address)
            return memory.read(size)

        for start, end, name in _anonymous_mappings(lines):
            present = _present_pages(pagemap, start, end)
            if name == "[heap]":
                main_heap += sum(present) * PAGE
                continue
            for kind, size, pages in _walk(start, present, read):
                if kind == "arena":
                    arena += pages * PAGE
                elif kind == "block":
                    counts[size] += 1
                    resident[size] += pages * PAGE
                else:
                    other += pages * PAGE
    blocks = tuple(
        sorted(
            (MappedBlocks(size, counts[size], resident[size]) for size in counts),
            key=lambda kind: -kind.resident_bytes,
        )
    )
    return HeapScan(arena, main_heap, blocks, other, mappings=len(lines))


def _anonymous_mappings(maps: list[str]) -> Iterator[tuple[int, int, str]]:
    """Of the lines of /proc/PID/maps, the private writable mappings with no file behind
    them, and the main heap."""
    for line in maps:
        fields = line.split(maxsplit=5)
        name = fields[5].strip() if len(fields) > 5 else ""
        if fields[1] != "rw-p" or (name and name != "[heap]"):
            continue
        start, end = (int(bound, 16) for bound in fields[0].split("-"))
        yield start, end, name


def _present_pages(pagemap: BinaryIO, start: int, end: int) -> list[bool]:
    """Whether each page of [start, end) is resident (bit 63 of its pagemap entry)."""
    pagemap.seek(start // PAGE * 8)
    data = pagemap.read((end - start) // PAGE * 8)
    return [bool(entry & _PRESENT_BIT) for (entry,) in struct.iter_unpack("=Q", data)]


def _walk(start: int, present: list[bool], read: Reader) -> Iterator[tuple[str, int, int]]:
    """The arena heaps, mapped blocks and other pages of one mapping starting at `start`:
    (kind, bytes spanned, resident pages). Headers are read on resident pages only."""
    index, pages = 0, len(present)
    while index < pages:
        if not present[index]:
            index += 1
            continue
        address = start + index * PAGE
        kind, span = "arena", _arena_heap(address, read)
        if span is None:
            kind, span = "block", _mapped_block(address, read)
        if span is None or span // PAGE > pages - index:
            yield "other", PAGE, 1
            index += 1
            continue
        count = span // PAGE
        yield kind, span, sum(present[index : index + count])
        index += count


def _arena_heap(address: int, read: Reader) -> int | None:
    """The bytes in use of the arena heap at `address`, if one starts there."""
    if address % HEAP_MAX_BYTES:
        return None
    arena, _previous, size, protected = _HEAP_INFO.unpack(read(address, _HEAP_INFO.size))
    if arena and 0 < size <= HEAP_MAX_BYTES and size % PAGE == 0 and protected >= size:
        return int(size)
    return None


def _mapped_block(address: int, read: Reader) -> int | None:
    """The bytes of the block glibc mapped at `address`, if one starts there."""
    previous, size_and_flags = _CHUNK_HEADER.unpack(read(address, _CHUNK_HEADER.size))
    size = size_and_flags & ~_FLAG_BITS
    if previous or size_and_flags & _FLAG_BITS != _IS_MMAPPED or not size or size % PAGE:
        return None
    return int(size)
