"""What a process costs, read from /proc: CPU seconds, resident and proportional memory."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

_TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time the process has used so far (its threads included)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    # The command name in parentheses may hold spaces; the fields after it are fixed.
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS_PER_S


def children_cpu_seconds(pid: int) -> float:
    """User plus system CPU time of the children the process has waited for."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[13]) + int(fields[14])) / _TICKS_PER_S


def rss_bytes(pid: int) -> int:
    return _status_kib(pid, "VmRSS:") * 1024


def pss_bytes(pid: int) -> int:
    """Proportional set size: private pages plus a fair share of pages shared with others."""
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no Pss line in /proc/{pid}/smaps_rollup")


def _status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1])
    raise RuntimeError(f"no {key} line in /proc/{pid}/status")


def cpu_shares(
    pids: Sequence[int], window_s: float, wait: Callable[[float], object]
) -> list[float]:
    """Each process's CPU use over `window_s`, in percent of one core.

    `wait(seconds)` passes the window (an Event's wait, so nothing here sleeps blindly).
    """
    before = [cpu_seconds(pid) for pid in pids]
    wait(window_s)
    after = [cpu_seconds(pid) for pid in pids]
    # Counted in whole clock ticks: the difference of two tick counts turned into float
    # seconds is not exact, and 5 ticks in 5 s must read 1.0 %, not 1.0000000000000009 %.
    return [
        round((end - start) * _TICKS_PER_S) / _TICKS_PER_S / window_s * 100
        for start, end in zip(before, after, strict=True)
    ]
