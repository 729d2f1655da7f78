"""The desired-state keeper: turns the watchers' reads into the state the master serves, and
keeps the minions up to date with it.

Changes arriving close together are coalesced into one rebuild; a rebuilt state that differs
starts a sync to every host. PUB drops events for minions that were not connected at that
moment, so the state goes out again on an interval (with the recent syncs still missing
answers), and at once, alone, to a minion that shows up behind.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import replace

from daybook import wire
from daybook.model.messages import Heartbeat
from daybook.model.state import DesiredState, EncodedState
from daybook.model.sync import Sync
from master.broadcaster import Broadcaster
from master.changes import DigestsChanged, MappingsChanged
from master.database import ResultsDatabase
from master.ledger import Fleet, SyncBook
from master.scheduler import Scheduler
from master.served import Served
from master.sync_keeper import ALL_HOSTS, SyncKeeper
from master.tuning import MasterTuning
from master.view_publisher import ViewPublisher

log = logging.getLogger(__name__)

REBUILD = "rebuild"
REPUBLISH = "republish"
# With nothing unanswered and nothing failed, the state still goes out this many republish
# intervals apart (5 minutes by default): a safety net that costs a large fleet little.
QUIET_REPUBLISH_INTERVALS = 10
CATCH_UP = "catch-up"


def catch_up_gap_s(subscribers: int, state_bytes: int, tuning: MasterTuning) -> float:
    """How far apart catch-ups go: never closer than `min_republish_gap_s`, nor than a copy
    of the state for every subscriber takes at `catch_up_bytes_per_s`."""
    return max(tuning.min_republish_gap_s, subscribers * state_bytes / tuning.catch_up_bytes_per_s)


class DesiredStateKeeper:
    def __init__(
        self,
        *,
        served: Served,
        syncs: SyncKeeper,
        broadcaster: Broadcaster,
        book: SyncBook,
        fleet: Fleet,
        database: ResultsDatabase,
        view: ViewPublisher,
        scheduler: Scheduler,
        tuning: MasterTuning,
        clock: Callable[[], float],
        monotonic: Callable[[], float],
    ) -> None:
        self._served = served
        self._syncs = syncs
        self._broadcaster = broadcaster
        self._book = book
        self._fleet = fleet
        self._db = database
        self._view = view
        self._scheduler = scheduler
        self._tuning = tuning
        self._clock = clock
        self._monotonic = monotonic
        self._started = monotonic()
        # The watchers that have read their source at least once.
        self._fresh: set[str] = set()
        self._last_republish = -math.inf

    def restore(self) -> None:
        """Serve the last desired state at once, until the watchers answer."""
        stored = self._db.load_state()
        if stored is None:
            return
        state, sync_id = stored
        decoded = wire.decode_state(state)
        served = self._served
        served.mappings, served.digests = decoded.mappings, decoded.digests
        served.pins = decoded.pins
        served.state = state
        # Held without its answers, or loaded from the database with them: the events name
        # it, and its answers are the book's (10,000 decoded reports in a large fleet).
        found = self._book.held(sync_id) or self._syncs.find(sync_id)
        if found is None:  # pruned away; keep its id so minions do not report it again
            found = Sync(sync_id, ALL_HOSTS, "auto", self._clock(), ())
            self._db.add_sync(found)
            self._db.commit()
        self._book.add(found)
        served.sync = replace(found, results={}) if found.results else found
        log.info("serving the stored desired state (sync %s) until the watchers answer", sync_id)
        self.republish(self._monotonic(), announce=True)

    # -- changes and rebuilds -------------------------------------------------------------------

    def on_change(self, change: MappingsChanged | DigestsChanged) -> None:
        served = self._served
        if isinstance(change, MappingsChanged):
            served.mappings = change.mappings
            served.pins = change.pins
            self._fresh.add("mappings")
        else:
            served.digests = change.digests
            served.sizes = change.sizes
            served.assets = change.assets
            self._fresh.add("digests")
        self._view.changed()
        due = self._monotonic() + self._tuning.coalesce_s
        if len(self._fresh) < 2:
            # One watcher has answered and the other not yet: give it a moment rather than
            # publish a state that mixes fresh and stale halves.
            due = max(due, self._started + self._tuning.startup_grace_s)
        self._scheduler.no_later_than(REBUILD, due)

    def rebuild_pending(self) -> None:
        """Rebuild now if changes are waiting to be, so that what they bring goes first."""
        if self._scheduler.due(REBUILD) is not None:
            self._scheduler.cancel(REBUILD)
            self.rebuild()

    def rebuild(self, _now: float | None = None) -> None:
        served = self._served
        # A standby keeps what the watchers read, and builds from it once it leads.
        if served.mappings is None or served.digests is None or not self.leading:
            return
        # A pin changes the state like a mapping does, so it goes out as a sync as well.
        state = wire.encode_state(DesiredState(served.mappings, served.digests, served.pins or {}))
        if served.state is not None and state.digest == served.state.digest:
            return
        self._start(state, "startup" if served.sync is None else "auto")

    def lead(self) -> None:
        """This master has just become the leader: a startup sync of the current state at
        once, so that every minion sees the new term and reports to it; until the watchers
        have answered, the stored state goes out again instead."""
        served = self._served
        if served.mappings is None or served.digests is None:
            self.republish(self._monotonic(), announce=True)
            return
        self._scheduler.cancel(REBUILD)
        self._start(
            wire.encode_state(DesiredState(served.mappings, served.digests, served.pins or {})),
            "startup",
        )

    @property
    def leading(self) -> bool:
        return self._broadcaster.standing.leading

    def _start(self, state: EncodedState, origin: str) -> None:
        served = self._served
        served.state = state
        sync = self._syncs.start(ALL_HOSTS, origin, request_id=None)
        self._db.save_state(state, sync.sync_id)
        self._db.commit()
        served.sync = sync
        log.info(
            "desired state %s (%d pattern(s), %d service(s), %d pin(s)): sync %s to %d host(s)",
            "changed" if origin == "auto" else "published",
            len(served.mappings or {}),
            len(served.digests or {}),
            len(served.pins or {}),
            sync.sync_id,
            len(sync.expected),
        )
        self._send_new(sync, state)

    @property
    def has_state(self) -> bool:
        """Whether a desired state has been built (or restored) to sync with."""
        return self._served.state is not None

    def sync_now(
        self,
        target: str | None,
        request_id: str | None,
        deadline_s: float,
        hosts: tuple[str, ...] | None = None,
    ) -> Sync | None:
        """Start an operator's sync of the current state (with `hosts`, addressed to those
        only: a batch of a rolling sync); None while there is no state yet."""
        state = self._served.state
        if state is None:
            return None
        sync = self._syncs.start(target or ALL_HOSTS, "operator", request_id, deadline_s, hosts)
        self._db.commit()
        log.info(
            "operator sync %s to %s: expecting %d host(s)",
            sync.sync_id,
            sync.target,
            len(sync.expected),
        )
        self._send_new(sync, state)
        return sync

    def _send_new(self, sync: Sync, state: EncodedState) -> None:
        """Publish a new sync; the state goes out with it, which a republish counts."""
        self._broadcaster.send(sync, state)
        self._last_republish = self._monotonic()

    # -- keeping minions up to date -------------------------------------------------------------

    def republish(self, mono: float, *, announce: bool = False) -> None:
        """Send the current state again, with every recent sync still missing answers from
        live hosts; the state's own sync goes last, so it is what a minion sees newest.

        With every recent sync answered, and none with a failure a live host may retry,
        it goes out only every QUIET_REPUBLISH_INTERVALS intervals, or to `announce` a master
        that just started or took the lead: no live minion lacks anything meanwhile, and
        one with another state is caught up from its heartbeat. With 10,000 minions a
        republish is 95 MB of CURVE encryption for the master's I/O thread.
        """
        self._scheduler.at(REPUBLISH, mono + self._tuning.republish_interval_s)
        state, own = self._served.state, self._served.sync
        if state is None or own is None:
            return
        now = self._clock()

        def is_up(host: str) -> bool:
            return self._fleet.is_up(host, now)

        unfinished = self._book.unfinished(
            now, self._tuning.unfinished_window_s, self._tuning.max_republished_syncs, is_up
        )
        quiet_due = self._last_republish + QUIET_REPUBLISH_INTERVALS * (
            self._tuning.republish_interval_s
        )
        needed = (
            announce
            or unfinished
            or mono >= quiet_due
            or self._book.failing(now, self._tuning.unfinished_window_s, is_up)
        )
        if not needed:
            return
        # The state goes out now: a catch-up due with it is needless.
        self._scheduler.cancel(CATCH_UP)
        self._last_republish = mono
        for sync in unfinished:
            if sync.sync_id != own.sync_id:
                self._broadcaster.send(sync, state, new=False)
        self._broadcaster.send(own, state, new=False)

    def catch_up(self, mono: float) -> None:
        """Send the current state alone, for minions that just showed up behind.

        Minions starting together share one catch-up; unfinished syncs wait for the next
        periodic republish, which keeps a fleet start-up from multiplying the traffic.
        """
        self._last_republish = mono
        state, own = self._served.state, self._served.sync
        if state is not None and own is not None:
            self._broadcaster.send(own, state, new=False)

    def heard(self, heartbeat: Heartbeat) -> None:
        """A minion not busy with a sync and behind the current state gets it soon.

        Behind means another state, not another epoch: after a master restart the whole
        fleet heartbeats the former epoch until it hears an event, and a catch-up of the
        state it already has, sent to every subscriber every `min_republish_gap_s` for as
        long as the reconnect storm lasts, would cost the master most of its CPU then. The
        minions resend their reports when their links come back, and hear the new epoch
        with the next republish. A large fleet starting together shares fewer catch-ups:
        they are paced by what they cost (`catch_up_gap_s`).
        """
        state = self._served.state
        if state is None or heartbeat.state_digest == state.digest or heartbeat.busy:
            return
        due = max(
            self._monotonic() + self._tuning.catch_up_delay_s,
            self._last_republish + catch_up_gap_s(len(self._fleet), len(state.blob), self._tuning),
        )
        self._scheduler.no_later_than(CATCH_UP, due)

    def cut_off(self, host: str | None) -> None:
        """A minion's key lost its standing: no event reaches it from now on, and no sync
        waits for it. (Its reports and heartbeats are already dropped: the collector checks
        every message's key.) The others reconnect; a catch-up soon after serves them."""
        self._broadcaster.drop_subscribers()
        if host is not None:
            self._fleet.cut_off(host)
            self._view.changed()
        self._scheduler.at(CATCH_UP, self._monotonic() + self._tuning.resubscribe_grace_s)
        log.warning("cut off %s: its key is no longer accepted", host or "a minion")
