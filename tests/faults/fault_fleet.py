"""What only the fault tests need besides the fleet itself (tests/process_fleet.py): asset
bodies shaped for faults, and the figures each test records."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from process_fleet import ProcessFleet


def many_files(count: int, size: int, *, per_dir: int = 100) -> dict[str, bytes]:
    """An asset body of `count` distinct files in directories of `per_dir` (`d000/f00000`),
    so a test can tell how far an extraction got by which directories exist."""
    return {
        f"d{index // per_dir:03d}/f{index:05d}": (f"{index:08d}".encode() * (size // 8 + 1))[:size]
        for index in range(count)
    }


def incompressible(size: int, seed: int = 0) -> bytes:
    """Bytes that gzip cannot shrink, the same for the same seed."""
    return random.Random(seed).randbytes(size)


FleetFactory = Callable[..., ProcessFleet]


class Figures:
    """What one test measured, printed at the end of the run and kept as JSON."""

    def __init__(self, store: dict[str, dict[str, Any]], test: str) -> None:
        self._values = store.setdefault(test, {})

    def __setitem__(self, name: str, value: Any) -> None:
        self._values[name] = round(value, 3) if isinstance(value, float) else value

    def __getitem__(self, name: str) -> Any:
        return self._values[name]

    @property
    def values(self) -> dict[str, Any]:
        return dict(self._values)
