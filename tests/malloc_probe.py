"""Watching glibc's malloc from a test: what a tuning asked of mallopt, and where blocks land.

One place for both the master's heap tests and the extracting processes' (daybook.cmalloc).
"""

from __future__ import annotations

import subprocess
import sys


class RecordingMallopt:
    """A mallopt that records what it is asked and answers `result` (1: glibc took it)."""

    def __init__(self, result: int = 1) -> None:
        self.calls: list[tuple[int, int]] = []
        self._result = result

    def __call__(self, parameter: int, value: int) -> int:
        self.calls.append((parameter, value))
        return self._result


def mapped_blocks(tuning: str, *, size: int, count: int) -> dict[str, int] | None:
    """How many of `count` blocks of `size` bytes glibc maps on pages of their own in a fresh
    interpreter, with its defaults ("default") and after the statements `tuning` ("tuned",
    `mallopt` in hand); None where the C library is not glibc.

    A mapped block begins 16 bytes into its first page; blocks from the heap follow one
    another, so few of them land there.
    """
    code = (
        "import ctypes, sys\n"
        "from daybook.cmalloc import find_mallopt\n"
        "mallopt = find_mallopt()\n"
        "if mallopt is None: sys.exit(0)\n"
        "if sys.argv[1] == 'tuned':\n"
        + "".join(f"    {line}\n" for line in tuning.splitlines())
        + "libc = ctypes.CDLL(None)\n"
        "libc.malloc.restype = ctypes.c_void_p\n"
        f"blocks = [libc.malloc({size}) for _ in range({count})]\n"
        "print(sum(block % 4096 == 16 for block in blocks))\n"
    )
    counts = {
        how: subprocess.run(
            [sys.executable, "-c", code, how], check=True, capture_output=True, text=True
        ).stdout
        for how in ("default", "tuned")
    }
    if not all(counts.values()):
        return None
    return {how: int(printed) for how, printed in counts.items()}
