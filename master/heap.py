"""The master's C heap: blocks of a connection's size on pages of their own, and the memory
a burst left free handed back to the operating system (glibc's mallopt and malloc_trim).

A master's memory peaks in bursts: a fleet's handshakes after a restart, every minion's
report on a sync, the state encrypted once per connection. libzmq's I/O thread allocates
most of it, from glibc arenas of its own that give back only what is free at their top;
the rest stays resident, free, until the next burst. malloc_trim releases every free page
of every arena.

Most of what libzmq holds for a connection comes in blocks of 8 to 20 KB (the encoder's
and decoder's buffers, the pipes' message queues), each only partly written. From an
arena, such a block lands on memory an earlier burst already dirtied, and counts in full;
and the blocks of connections that lived through a storm pin the arena's free holes
around them. Mapped on pages of their own (glibc's mmap threshold, lowered from its
dynamic 128 KB-32 MB to 8 KB; glibc maps a block where its arena would otherwise have to
grow), a block counts only for the pages written, and goes back to the OS the moment it
is freed: 8 MB less with 1,000 minions; with 8,900, 1.05 GB in all instead of 1.50 (six
such blocks a connection, 100,000 in all, most only a page or two written; measured
before events went in frames of 7 KB, see daybook.wire, and before the ZAP handler's
socket was renewed, which ends two of the six: see master.gatekeeper).

Each mapped block is a mapping of the process, and the kernel allows a process only so
many (vm.max_map_count, 65,530 by default); past that, every mmap fails, libsodium's
guarded allocations for CURVE included. Blocks mapped one after another merge into one
mapping (100,000 blocks made 6,600 mappings), so glibc's own count of blocks is no
measure: the master counts its mappings on the trim timer instead, and stops mapping new
blocks while they fill half the kernel's limit.

Where the C library is not glibc (musl, macOS) this does nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path

from daybook.cmalloc import (
    M_MMAP_MAX,
    M_MMAP_THRESHOLD,
    Mallopt,
    find_malloc_trim,
    operator_tuned,
)

log = logging.getLogger(__name__)

# Blocks from this size up get pages of their own...
MMAP_THRESHOLD_BYTES = 8 * 1024
# ...with no limit on their number from glibc (its default is 65,536 blocks)...
MMAP_MAX = 1 << 30
# ...while the process's mappings fill less than this share of the kernel's limit; new
# blocks come from the arenas until they are down to the lower share.
MAPPINGS_HIGH_SHARE = 0.5
MAPPINGS_LOW_SHARE = 0.4
MAX_MAP_COUNT_PATH = Path("/proc/sys/vm/max_map_count")
DEFAULT_MAX_MAP_COUNT = 65_530
OWN_MAPPINGS_PATH = Path("/proc/self/maps")


def tune_allocator(environ: Mapping[str, str], mallopt: Mallopt | None) -> MappedBlocks | None:
    """Lower glibc's mmap threshold for the rest of the process, every thread's arena
    included (see the module's docstring); what keeps it within the kernel's mappings, or
    None when nothing was changed."""
    if mallopt is None or operator_tuned(environ):
        return None
    if not (mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) and mallopt(M_MMAP_MAX, MMAP_MAX)):
        return None
    return MappedBlocks(mallopt, limit=max_map_count())


def max_map_count(path: Path = MAX_MAP_COUNT_PATH) -> int:
    """The kernel's limit on one process's mappings."""
    try:
        return int(path.read_text())
    except (OSError, ValueError):
        return DEFAULT_MAX_MAP_COUNT


def count_mappings(path: Path = OWN_MAPPINGS_PATH) -> int:
    """How many mappings this process holds: a line each in /proc/self/maps."""
    with path.open("rb") as maps:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: maps.read(1 << 16), b""))


class MappedBlocks:
    """Large blocks mapped on pages of their own while the process has room for more
    mappings, from the arenas while it has not (see the module's docstring)."""

    def __init__(
        self, mallopt: Mallopt, *, limit: int, count: Callable[[], int] = count_mappings
    ) -> None:
        self._mallopt = mallopt
        self._count = count
        self._high = int(limit * MAPPINGS_HIGH_SHARE)
        self._low = int(limit * MAPPINGS_LOW_SHARE)
        self.mapping = True

    def check(self) -> None:
        """Stop or resume mapping new blocks by the mappings the process holds now."""
        try:
            mappings = self._count()
        except OSError:
            return
        if self.mapping and mappings >= self._high:
            self.mapping = not self._mallopt(M_MMAP_MAX, 0)
            log.warning(
                "the master holds %d memory mappings, half the kernel's limit "
                "(vm.max_map_count): large blocks come from the heap until %d",
                mappings,
                self._low,
            )
        elif not self.mapping and mappings <= self._low:
            self.mapping = bool(self._mallopt(M_MMAP_MAX, MMAP_MAX))
            log.info("the master holds %d memory mappings: large blocks mapped again", mappings)


def find_trim(blocks: MappedBlocks | None = None) -> Callable[[], None]:
    """A call that returns free heap pages to the OS (malloc_trim(0), or nothing), and
    keeps `blocks` within the kernel's mappings."""
    trim = find_malloc_trim()
    if trim is None:
        return blocks.check if blocks is not None else lambda: None

    def release() -> None:
        trim(0)
        if blocks is not None:
            blocks.check()

    return release
