"""Handing the memory a burst left free back to the operating system (glibc's malloc_trim).

A master's memory peaks in bursts: a fleet's handshakes after a restart, every minion's
report on a sync, the state encrypted once per connection. libzmq's I/O thread allocates
most of it, from glibc arenas of its own that give back only what is free at their top;
the rest stays resident, free, until the next burst. malloc_trim releases every free page
of every arena. Where the C library has no malloc_trim (musl, macOS) this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable


def find_trim() -> Callable[[], None]:
    """A call that returns free heap pages to the OS: malloc_trim(0), or nothing."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        trim = libc.malloc_trim
    except (OSError, AttributeError, TypeError):
        return lambda: None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int

    def release() -> None:
        trim(0)

    return release
