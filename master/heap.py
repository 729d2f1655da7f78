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
is freed: 8 MB less with 1,000 minions.

Where the C library is not glibc (musl, macOS) this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from collections.abc import Callable, Mapping

log = logging.getLogger(__name__)

# glibc's mallopt parameters (malloc.h).
M_MMAP_THRESHOLD = -3
M_MMAP_MAX = -4
# Blocks from this size up get pages of their own...
MMAP_THRESHOLD_BYTES = 8 * 1024
# ...this many at once at most, so that with the kernel's 65,530 mappings a process
# (vm.max_map_count), Python's arenas and the threads' stacks always find room; past it,
# blocks come from the arenas as before.
MMAP_MAX = 32_000
# Set by an operator, glibc's own tunables win over this module's choice.
_OPERATOR_TUNABLES = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_MMAP_MAX_", "GLIBC_TUNABLES")

Mallopt = Callable[[int, int], int]


def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c"))
    except (OSError, TypeError):
        return None


def find_mallopt() -> Mallopt | None:
    libc = _libc()
    mallopt = getattr(libc, "mallopt", None) if libc is not None else None
    if mallopt is None:
        return None
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return mallopt  # type: ignore[no-any-return]


def tune_allocator(environ: Mapping[str, str], mallopt: Mallopt | None) -> bool:
    """Lower glibc's mmap threshold for the rest of the process, every thread's arena
    included (see the module's docstring); True when it did."""
    if mallopt is None:
        return False
    if any(name in environ for name in _OPERATOR_TUNABLES):
        log.info("glibc's malloc tunables are set in the environment: leaving them be")
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) and mallopt(M_MMAP_MAX, MMAP_MAX))


def find_trim() -> Callable[[], None]:
    """A call that returns free heap pages to the OS: malloc_trim(0), or nothing."""
    libc = _libc()
    try:
        trim = libc.malloc_trim  # type: ignore[union-attr]
    except AttributeError:
        return lambda: None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int

    def release() -> None:
        trim(0)

    return release
