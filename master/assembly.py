"""Puts the master loop's parts together: which ledger, scheduler and clocks each shares,
and the order the loop's timers run in."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from master.access import Access
from master.broadcaster import Broadcaster
from master.collector import Collector
from master.control_server import ControlServer
from master.database import ResultsDatabase
from master.desired_state import (
    CATCH_UP,
    QUIET_REPUBLISH_INTERVALS,
    REBUILD,
    REPUBLISH,
    DesiredStateKeeper,
)
from master.download_desk import DownloadDesk, Signer
from master.heartbeat_pace import PACE_SETTLE, HeartbeatPace
from master.housekeeping import HEAP_TRIM, HOST_FLUSH, PRUNE, Housekeeper
from master.ledger import Fleet, SyncBook
from master.metrics import MasterMetrics
from master.operator_desk import WAITERS, OperatorDesk
from master.publisher import Publisher
from master.recorder import ResultsRecorder
from master.refresh import REFRESH, RefreshRound
from master.rollouts import ROLLOUTS, PinWriter, RolloutDriver
from master.scheduler import Scheduler
from master.served import Served
from master.snapshot import SnapshotBox
from master.standing import Standing
from master.sync_keeper import CLOSE_CHECK, SWEEP, SyncKeeper
from master.tuning import MasterTuning
from master.view_publisher import VIEW, ViewPublisher

Clock = Callable[[], float]


@dataclass(frozen=True)
class Clocks:
    """Wall-clock seconds for what is recorded and shown; monotonic ones for timers."""

    wall: Clock
    monotonic: Clock


@dataclass(frozen=True)
class LoopParts:
    """The parts the master loop hands its work to, all on the loop's thread."""

    timers: Scheduler
    book: SyncBook
    view: ViewPublisher
    broadcaster: Broadcaster
    syncs: SyncKeeper
    desired: DesiredStateKeeper
    recorder: ResultsRecorder
    desk: OperatorDesk
    housekeeper: Housekeeper


@dataclass(frozen=True)
class _Publishing:
    served: Served
    view: ViewPublisher
    broadcaster: Broadcaster
    syncs: SyncKeeper
    desired: DesiredStateKeeper

    @property
    def loop_parts(self) -> tuple[ViewPublisher, Broadcaster, SyncKeeper, DesiredStateKeeper]:
        return self.view, self.broadcaster, self.syncs, self.desired


def assemble(
    *,
    epoch: int,
    publisher: Publisher,
    collector: Collector,
    control: ControlServer,
    database: ResultsDatabase,
    fleet: Fleet,
    tuning: MasterTuning,
    refreshers: Mapping[str, Callable[[], None]],
    clocks: Clocks,
    metrics: MasterMetrics,
    snapshots: SnapshotBox | None,
    access: Access,
    signer: Signer | None = None,
    pins: PinWriter | None = None,
    standing: Standing | None = None,
    release_memory: Callable[[], None] | None = None,
) -> LoopParts:
    timers, book = Scheduler(failed=metrics.task_failed), SyncBook()
    out = _publishing(
        epoch=epoch,
        publisher=publisher,
        database=database,
        fleet=fleet,
        tuning=tuning,
        clocks=clocks,
        metrics=metrics,
        snapshots=snapshots,
        timers=timers,
        book=book,
        standing=standing or Standing(),
    )
    recorder = _recorder(
        collector, database, fleet, book, out=out, metrics=metrics, tuning=tuning, clocks=clocks
    )
    desk = _operator_desk(
        epoch=epoch,
        control=control,
        access=access,
        fleet=fleet,
        tuning=tuning,
        refreshers=refreshers,
        clocks=clocks,
        metrics=metrics,
        timers=timers,
        book=book,
        out=out,
        signer=signer,
        pins=pins,
    )
    housekeeper = Housekeeper(
        database=database, fleet=fleet, scheduler=timers, tuning=tuning, trim=release_memory
    )
    parts = LoopParts(timers, book, *out.loop_parts, recorder, desk, housekeeper)
    return _add_timers(parts, tuning, clocks.monotonic())


def _recorder(
    collector: Collector,
    database: ResultsDatabase,
    fleet: Fleet,
    book: SyncBook,
    *,
    out: _Publishing,
    metrics: MasterMetrics,
    tuning: MasterTuning,
    clocks: Clocks,
) -> ResultsRecorder:
    return ResultsRecorder(
        collector=collector,
        database=database,
        fleet=fleet,
        book=book,
        served=out.served,
        desired=out.desired,
        view=out.view,
        metrics=metrics,
        batch_limit=tuning.batch_limit,
        clock=clocks.wall,
    )


def _publishing(
    *,
    epoch: int,
    publisher: Publisher,
    database: ResultsDatabase,
    fleet: Fleet,
    tuning: MasterTuning,
    clocks: Clocks,
    metrics: MasterMetrics,
    snapshots: SnapshotBox | None,
    timers: Scheduler,
    book: SyncBook,
    standing: Standing,
) -> _Publishing:
    """The parts that decide what goes out: the snapshot, syncs, the desired state."""
    served = Served()
    view = ViewPublisher(
        epoch=epoch,
        fleet=fleet,
        served=served,
        scheduler=timers,
        tuning=tuning,
        clock=clocks.wall,
        monotonic=clocks.monotonic,
        snapshots=snapshots,
        standing=standing,
    )
    broadcaster = Broadcaster(
        publisher,
        epoch=epoch,
        metrics=metrics,
        monotonic=clocks.monotonic,
        download_starts_per_s=tuning.download_starts_per_s,
        standing=standing,
        pace=_heartbeat_pace(fleet, timers, tuning),
    )
    return _keepers(
        served=served,
        view=view,
        broadcaster=broadcaster,
        book=book,
        database=database,
        fleet=fleet,
        metrics=metrics,
        timers=timers,
        tuning=tuning,
        clocks=clocks,
    )


def _keepers(
    *,
    served: Served,
    view: ViewPublisher,
    broadcaster: Broadcaster,
    book: SyncBook,
    database: ResultsDatabase,
    fleet: Fleet,
    metrics: MasterMetrics,
    timers: Scheduler,
    tuning: MasterTuning,
    clocks: Clocks,
) -> _Publishing:
    """The keepers of syncs and of the desired state, around the publishing parts."""
    syncs = SyncKeeper(
        book=book,
        database=database,
        fleet=fleet,
        metrics=metrics,
        view=view,
        scheduler=timers,
        tuning=tuning,
        clock=clocks.wall,
        monotonic=clocks.monotonic,
    )
    desired = DesiredStateKeeper(
        served=served,
        syncs=syncs,
        broadcaster=broadcaster,
        book=book,
        fleet=fleet,
        database=database,
        view=view,
        scheduler=timers,
        tuning=tuning,
        clock=clocks.wall,
        monotonic=clocks.monotonic,
    )
    return _Publishing(served, view, broadcaster, syncs, desired)


def _heartbeat_pace(fleet: Fleet, timers: Scheduler, tuning: MasterTuning) -> HeartbeatPace:
    """The pace the broadcaster's events ask for, and its timer: added before the rest, it
    runs first in a pass, so the snapshot published in it has the new `down_after_s`."""
    # Minions hear a new pace with the next event: at the latest the quiet republish, and
    # one more republish interval covers an event a minion missed.
    pace = HeartbeatPace(
        fleet,
        timers,
        interval_s=tuning.heartbeat_interval_s,
        max_per_s=tuning.max_heartbeats_per_s,
        settle_s=(QUIET_REPUBLISH_INTERVALS + 1) * tuning.republish_interval_s,
    )
    timers.add(PACE_SETTLE, pace.settle)
    return pace


def _operator_desk(
    *,
    epoch: int,
    control: ControlServer,
    access: Access,
    fleet: Fleet,
    tuning: MasterTuning,
    refreshers: Mapping[str, Callable[[], None]],
    clocks: Clocks,
    metrics: MasterMetrics,
    timers: Scheduler,
    book: SyncBook,
    out: _Publishing,
    signer: Signer | None,
    pins: PinWriter | None,
) -> OperatorDesk:
    refresh = RefreshRound(
        refreshers,
        scheduler=timers,
        timeout_s=tuning.refresh_timeout_s,
        monotonic=clocks.monotonic,
    )
    return OperatorDesk(
        control=control,
        access=access,
        downloads=DownloadDesk(
            served=out.served,
            signer=signer,
            expiry_s=tuning.download_url_expiry_s,
            metrics=metrics,
            clock=clocks.wall,
        ),
        book=book,
        fleet=fleet,
        syncs=out.syncs,
        rollouts=RolloutDriver(
            served=out.served,
            syncs=out.syncs,
            desired=out.desired,
            fleet=fleet,
            refresh=refresh,
            view=out.view,
            scheduler=timers,
            pins=pins,
            clock=clocks.wall,
            monotonic=clocks.monotonic,
        ),
        desired=out.desired,
        refresh=refresh,
        view=out.view,
        metrics=metrics,
        scheduler=timers,
        batch_limit=tuning.batch_limit,
        epoch=epoch,
        clock=clocks.wall,
        monotonic=clocks.monotonic,
        standing=out.broadcaster.standing,
    )


def _add_timers(parts: LoopParts, tuning: MasterTuning, started: float) -> LoopParts:
    """Every timer of the loop. When several are due in one pass they run in this order:
    a refresh round that ran out rebuilds before its syncs start; a republish makes a
    catch-up due with it needless; the operators waiting on a sync closed just now are
    answered in the same pass; the snapshot goes last, with all of that in it. Returns
    `parts`."""
    timers, desired, syncs, desk = parts.timers, parts.desired, parts.syncs, parts.desk

    def close_ended_syncs(mono: float) -> None:
        if syncs.close_ended(mono):
            desk.release_waiters(mono)

    timers.add(REFRESH, desk.refresh_overdue)
    timers.add(REBUILD, desired.rebuild)
    timers.add(REPUBLISH, desired.republish, due=started + tuning.republish_interval_s)
    timers.add(CATCH_UP, desired.catch_up)
    # Looking for syncs that have ended wakes the loop only while any is open.
    timers.add(CLOSE_CHECK, close_ended_syncs, due=started, wakes=syncs.has_open_syncs)
    timers.add(SWEEP, syncs.sweep, due=started, wakes=syncs.has_open_syncs)
    timers.add(WAITERS, desk.release_waiters)
    # A rollout's next batch, once the wait after the last one is over.
    timers.add(ROLLOUTS, desk.release_waiters)
    housekeeper = parts.housekeeper
    # Saving hosts wakes the loop only while a host changed: a master with nothing to do
    # sleeps until its next periodic task instead of waking every second to save nothing
    # (a pass after a second asleep cost the loop 5 ms of CPU here, its caches cold).
    timers.add(
        HOST_FLUSH,
        housekeeper.flush_hosts,
        due=started + tuning.host_flush_interval_s,
        wakes=housekeeper.has_unsaved_hosts,
    )
    timers.add(PRUNE, housekeeper.prune, due=started)
    timers.add(HEAP_TRIM, housekeeper.release_memory, due=started + tuning.heap_trim_interval_s)
    timers.add(VIEW, parts.view.publish)
    return parts
