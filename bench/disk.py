"""Whether the disk creates files at its quiet speed, and waiting until it does.

On ext4 without a journal (what this kind of VM's disk is) a new inode is not taken from
those freed in the last minute, or in the last six while their inode table block is dirty:
the allocator passes over each of them, one buffer lookup apiece (`recently_deleted` in
the kernel's fs/ext4/ialloc.c), and when nothing else is free it scans the whole group
before taking one anyway. Right after a bench's clean-up deleted a million files, `perf`
put 70 % of an extraction of 20,000 files in that scan, and the runs took 2-5 s instead of
0.5: every contender that writes many files is slowed, and more so the faster it writes.
`tar -xzf` hides much of it behind gzip, which takes 0.65 s to inflate the bench's small
asset; daybook's extractor, which inflates it in 0.17 s, hides nothing.

So before timing, the pull section creates a few thousand empty files beside its runs and
waits until that costs what it does on a quiet disk. The files stay until the section
ends: deleting them would free inodes of its own.

Waiting cures only that. On this kind of VM creating a file is also dear when the kernel
must take memory it has not written since the host took it back (free page reporting):
after the `swarm` section had come and gone, an empty file took 26-44 us for the whole
seven minutes, and the small asset's pull read 1.10x tar instead of 1.31x. The probe's
figure, in the table, says which kind of machine a run had.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

PROBE_FILES = 2000
# An empty file took 10-17 us on a quiet disk of this kind of VM, 25-100 us within minutes
# of a million files being deleted.
QUIET_US_PER_FILE = 20.0
WAIT_STEP_S = 30.0
# Past the kernel's longest window (six minutes), whatever is left is not that.
MAX_WAIT_S = 420.0


@dataclass(frozen=True)
class DiskState:
    """The last probe's cost of creating one empty file, and how long we waited for it."""

    us_per_file: float
    waited_s: float

    @property
    def quiet(self) -> bool:
        return self.us_per_file <= QUIET_US_PER_FILE


def creation_cost_us(
    directory: Path, files: int = PROBE_FILES, *, sync: Callable[[], None] = os.sync
) -> float:
    """Microseconds to create (and close) one empty file, over `files` in the new `directory`."""
    directory.mkdir(parents=True)
    sync()  # Nothing another process left dirty is written back while we time.
    start = time.perf_counter()
    for index in range(files):
        os.close(os.open(directory / f"p{index}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
    return (time.perf_counter() - start) / files * 1e6


def wait_until_quiet(
    workdir: Path,
    *,
    max_wait_s: float = MAX_WAIT_S,
    step_s: float = WAIT_STEP_S,
    probe: Callable[[Path], float] = creation_cost_us,
    sleep: Callable[[float], None] = time.sleep,
    report: Callable[[str], None] = print,
) -> DiskState:
    """Probe under `workdir` until creating a file is quiet-fast, or `max_wait_s` passed."""
    waited_s = 0.0
    attempt = 0
    while True:
        cost = probe(workdir / f"disk-probe-{attempt}")
        state = DiskState(cost, waited_s)
        if state.quiet or waited_s >= max_wait_s:
            return state
        report(
            f"# disk: creating a file takes {cost:.0f} us here (quiet: under "
            f"{QUIET_US_PER_FILE:.0f}), slowing every contender's writes; if files were "
            f"deleted in the last six minutes, that passes: waiting {step_s:.0f} s "
            f"({waited_s:.0f} of at most {max_wait_s:.0f} s waited)"
        )
        sleep(step_s)
        waited_s += step_s
        attempt += 1
