"""Run options, and timing several contenders round by round so machine noise hits all alike."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Options:
    runs: int
    warmup: int
    quick: bool
    # Scratch space for install dirs and servers' files; removed at exit.
    workdir: Path
    # Generated assets, kept between bench runs (they take a while to make).
    cache_dir: Path
    # The daybook console script of this environment.
    daybook: Path
    # Minions in the swarm10k section (fewer where the open-file limit allows fewer).
    swarm_size: int = 10_000


def timed(action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def run_checked(argv: Sequence[str], env: Mapping[str, str] | None = None) -> float:
    """Run a command to completion; its wall time in seconds. Output is kept for errors only."""
    start = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, check=False)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(
            f"{' '.join(argv)} exited {done.returncode}: "
            f"{done.stderr.decode(errors='replace').strip()[-2000:]}"
        )
    return elapsed


def rounds(
    contenders: Mapping[str, Callable[[], float]],
    *,
    runs: int,
    warmup: int,
    before: Callable[[str], None] | None = None,
    after: Callable[[str], None] | None = None,
) -> dict[str, list[float]]:
    """Time each contender `runs` times, one of each per round, after `warmup` rounds.

    Each contender returns its own elapsed time, so set-up it does not want counted stays
    outside. `before` and `after` run untimed around every run (cleaning an install dir).
    The starting contender rotates so none always runs first on a cold cache.
    """
    names = list(contenders)
    timings: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(warmup + runs):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            if before is not None:
                before(name)
            elapsed = contenders[name]()
            if after is not None:
                after(name)
            if round_index >= warmup:
                timings[name].append(elapsed)
    return timings
