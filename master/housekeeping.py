"""The housekeeper: keeps the results database current with the fleet, and bounded."""

from __future__ import annotations

import logging

from master.database import ResultsDatabase
from master.ledger import Fleet
from master.scheduler import Scheduler
from master.tuning import MasterTuning

log = logging.getLogger(__name__)

# The timers that save the hosts' changed statuses, and that prune old syncs.
HOST_FLUSH = "host-flush"
PRUNE = "prune"


class Housekeeper:
    """Hosts' statuses change with every heartbeat: they are saved in batches, every
    `host_flush_interval_s`. Syncs beyond the newest `keep_syncs` are pruned now and then."""

    def __init__(
        self,
        *,
        database: ResultsDatabase,
        fleet: Fleet,
        scheduler: Scheduler,
        tuning: MasterTuning,
    ) -> None:
        self._db = database
        self._fleet = fleet
        self._scheduler = scheduler
        self._tuning = tuning

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

    def flush_all(self) -> None:
        """The master is stopping: save every changed host now."""
        self._db.save_hosts(self._fleet.take_dirty())
        self._db.commit()
