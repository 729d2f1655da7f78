"""The housekeeper's timers: freed memory goes back to the OS on its own schedule."""

from __future__ import annotations

from pathlib import Path

from master.database import ResultsDatabase
from master.heap import find_trim
from master.housekeeping import HEAP_TRIM, Housekeeper
from master.ledger import Fleet
from master.scheduler import Scheduler
from master.tuning import MasterTuning


def test_freed_memory_is_handed_back_on_the_heap_trim_timer(tmp_path: Path) -> None:
    trims: list[None] = []
    scheduler = Scheduler()
    database = ResultsDatabase(tmp_path / "master.db")
    try:
        keeper = Housekeeper(
            database=database,
            fleet=Fleet(15.0),
            scheduler=scheduler,
            tuning=MasterTuning(heap_trim_interval_s=30.0),
            trim=lambda: trims.append(None),
        )
        scheduler.add(HEAP_TRIM, keeper.release_memory, due=100.0)
        scheduler.run_due(99.0)
        assert trims == []
        scheduler.run_due(100.0)
        assert trims == [None]
        assert scheduler.due(HEAP_TRIM) == 130.0
        scheduler.run_due(129.0)
        assert len(trims) == 1
    finally:
        database.close()


def test_the_trim_runs_where_the_c_library_has_one() -> None:
    find_trim()()  # glibc's malloc_trim, or nothing; never an error
