"""The housekeeper: keeps the results database current with the fleet, and bounded."""

from __future__ import annotations

import logging
from collections.abc import Callable

from master.database import ResultsDatabase
from master.heap import find_trim
from master.ledger import Fleet
from master.scheduler import Scheduler
from master.tuning import MasterTuning

log = logging.getLogger(__name__)

# The timers that save the hosts' changed statuses, prune old syncs, and hand freed
# memory back to the OS.
HOST_FLUSH = "host-flush"
PRUNE = "prune"
HEAP_TRIM = "heap-trim"


class Housekeeper:
    """Hosts' statuses change with every heartbeat: they are saved in batches, every
    `host_flush_interval_s`. Syncs beyond the newest `keep_syncs` are pruned now and then,
    and every `heap_trim_interval_s` the memory bursts left free goes back to the OS
    (`trim`: see master.heap)."""

    def __init__(
        self,
        *,
        database: ResultsDatabase,
        fleet: Fleet,
        scheduler: Scheduler,
        tuning: MasterTuning,
        trim: Callable[[], None] | None = None,
    ) -> None:
        self._db = database
        self._fleet = fleet
        self._scheduler = scheduler
        self._tuning = tuning
        self._trim = trim or find_trim()

    def has_unsaved_hosts(self) -> bool:
        return self._fleet.has_unsaved()

    def flush_hosts(self, mono: float) -> None:
        self._scheduler.at(HOST_FLUSH, mono + self._tuning.host_flush_interval_s)
        dirty = self._fleet.take_dirty()
        if dirty:
            self._db.save_hosts(dirty)
            self._db.commit()

    def prune(self, mono: float) -> None:
        self._scheduler.at(PRUNE, mono + self._tuning.prune_interval_s)
        removed = self._db.prune(self._tuning.keep_syncs)
        self._db.commit()
        if removed:
            log.info("pruned %d old sync(s) from the results database", removed)

    def release_memory(self, mono: float) -> None:
        self._scheduler.at(HEAP_TRIM, mono + self._tuning.heap_trim_interval_s)
        self._trim()

    def flush_all(self) -> None:
        """The master is stopping: save every changed host now."""
        self._db.save_hosts(self._fleet.take_dirty())
        self._db.commit()
