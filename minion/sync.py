"""The minion's sync loop: resolve -> plan -> pull -> install -> reports, off the socket thread.

`plan` decides per service whether anything can have changed (the event's versions digest
against the digest of what this host last installed completely); only changed services
cost a store listing, a splay delay and downloads. `SyncWorker` runs one sync at a time
and coalesces events that arrive meanwhile into one run of the newest state.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from daybook.errors import DaybookError
from daybook.install.installer import Installer, Selections
from daybook.model.ids import versions_digest
from daybook.model.messages import SyncEvent
from daybook.model.names import sorted_versions
from daybook.model.patterns import Resolution
from daybook.model.releases import pinned_versions
from daybook.model.results import Report, ServiceResult, ServiceResults
from daybook.model.rules import clip_text
from daybook.model.state import DesiredState
from minion.desired import DesiredStateCache
from minion.memory import AppliedService, MinionMemory

if TYPE_CHECKING:
    from daybook.install.releases import ReleaseKeeper

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Plan:
    """Services whose installed versions still match the store, and services to pull."""

    unchanged: Mapping[str, tuple[str, ...]]
    changed: tuple[str, ...]


def plan(
    services: Sequence[str],
    desired: DesiredState,
    applied: Callable[[str], AppliedService | None],
    installed: Mapping[str, Sequence[str]],
    pinned: Mapping[str, str | None] | None = None,
) -> Plan:
    """A service is unchanged when its digest matches what this host last installed in full
    and every one of those versions is still on disk (someone may have removed one), and
    its pinned version, if any, is installed (a pin may name one retention removed)."""
    unchanged: dict[str, tuple[str, ...]] = {}
    changed: list[str] = []
    for service in services:
        entry = applied(service)
        pin = (pinned or {}).get(service)
        on_disk = set(installed.get(service, ()))
        if (
            entry is not None
            and entry.digest == desired.digest_for(service)
            and set(entry.versions) <= on_disk
            and (pin is None or pin in on_disk)
        ):
            unchanged[service] = entry.versions
        else:
            changed.append(service)
    return Plan(unchanged, tuple(changed))


class Cancelled(Exception):
    """The minion is stopping; the sync in progress is abandoned before it downloads."""


@dataclass(frozen=True)
class Outcome:
    """What one sync did on this host."""

    pattern: str | None
    services: Mapping[str, ServiceResult]
    installed: Mapping[str, tuple[str, ...]]
    # True when the store was asked: something changed, was missing, or failed.
    pulled: bool
    applied: Mapping[str, AppliedService | None] = field(default_factory=dict)

    # Services where the release lifecycle changed something (a link, a removal, a hook).
    settled: frozenset[str] = frozenset()

    @property
    def eventful(self) -> bool:
        """Anything installed, failed or changed by the release lifecycle: worth a report
        even for an already-reported sync."""
        return bool(self.settled) or any(r.installed or not r.ok for r in self.services.values())


class ServiceApplier:
    """Brings one host's services up to a desired state through the installer."""

    def __init__(
        self,
        installer: Installer,
        memory: MinionMemory,
        splay: Callable[[float | None], bool],
        install: Callable[[Sequence[str], Selections], ServiceResults] | None = None,
        keeper: ReleaseKeeper | None = None,
    ) -> None:
        self._installer = installer
        self._memory = memory
        # Waits the random pre-download delay within the event's spread (None: the minion's
        # own splay); False if the minion is stopping meanwhile.
        self._splay = splay
        # Installs the changed services: the installer itself, or a child process running
        # it (a minion process: see minion.install_child). It may raise Cancelled.
        self._install = install or installer.sync
        # The release lifecycle (retention, the `current` link, hooks), where it is on.
        self._keeper = keeper

    def apply(
        self,
        desired: DesiredState,
        resolution: Resolution,
        spread_s: float | None = None,
        host: str = "",
    ) -> Outcome:
        services = resolution.services
        # Pins matter only to the release lifecycle: without it, every version is installed.
        pinned = pinned_versions(desired.pins, services, host) if self._keeper else {}
        installed = {s: tuple(v) for s, v in self._installer.installed(services).items()}
        steps = plan(services, desired, self._memory.applied, installed, pinned)
        results: dict[str, ServiceResult] = {
            service: ServiceResult(present=versions)
            for service, versions in steps.unchanged.items()
        }
        applied: dict[str, AppliedService | None] = {}
        if steps.changed:
            # Spread the fleet's downloads; a no-op sync answers at once instead.
            if not self._splay(spread_s):
                raise Cancelled
            selections = self._keeper.selections(steps.changed, pinned) if self._keeper else {}
            outcome = self._install(steps.changed, selections)
            for service in steps.changed:
                result = _clipped(outcome[service])
                results[service] = result
                if result.ok:
                    versions = tuple(sorted_versions([*result.installed, *result.present]))
                    applied[service] = AppliedService(versions_digest(versions), versions)
                else:
                    applied[service] = None
                installed[service] = tuple(self._installer.installed_versions(service))
        settled: frozenset[str] = frozenset()
        if self._keeper is not None and self._keeper.enabled(services):
            # Every mapped service, changed or not: a pin may have moved, or a version that
            # was in use may be free to go. Local and cheap; reported only when it did work.
            done = self._keeper.settle_all(self._installer, results, pinned)
            results, settled = {s: _clipped(r) for s, r in done.results.items()}, done.changed
            for service in settled:
                installed[service] = tuple(self._installer.installed_versions(service))
                if not results[service].ok:
                    applied[service] = None
        return Outcome(
            pattern=resolution.pattern,
            services={service: results[service] for service in services},
            installed={service: installed[service] for service in services},
            pulled=bool(steps.changed),
            applied=applied,
            settled=settled,
        )


def _clipped(result: ServiceResult) -> ServiceResult:
    """Failure reasons cut to what the wire carries."""
    if not result.failed and result.error is None:
        return result
    return dataclasses.replace(
        result,
        failed={version: clip_text(reason) for version, reason in result.failed.items()},
        error=None if result.error is None else clip_text(result.error),
    )


@dataclass
class PendingSync:
    """The newest event to apply, and every sync id to report once it is applied."""

    event: SyncEvent
    report_for: list[str]


@dataclass(frozen=True)
class Synced:
    """One job done: the reports to send, and what to remember once they are on their way."""

    reports: list[Report]
    applied: Mapping[str, AppliedService | None]


class Syncer:
    """Turns a job into reports: decode the state, resolve this host, apply.

    `run` does not write to disk: the caller sends the reports first and then calls
    `remember`, so the file write is never on the path of an answer. A crash in between
    loses at most a report the master has not recorded, and the master's republish of an
    unfinished sync brings it back.
    """

    def __init__(
        self,
        host: str,
        applier: ServiceApplier,
        cache: DesiredStateCache,
        memory: MinionMemory,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._host = host
        self._applier = applier
        self._cache = cache
        self._memory = memory
        self._clock = clock

    def run(self, job: PendingSync) -> Synced:
        event = job.event
        started = self._clock()
        outcome: Outcome | None = None
        error: str | None = None
        try:
            _desired, table = self._cache.get(event.encoded_state)
            outcome = self._applier.apply(
                _desired, table.resolve(self._host), event.spread_s, self._host
            )
        except DaybookError as exc:  # a malformed state, the install lock, ...
            error = clip_text(str(exc))
            log.warning("sync %s failed: %s", event.sync_id, error)
        except Cancelled:
            raise
        except Exception as exc:  # the worker must survive a bug and say so in the report
            log.exception("sync %s failed", event.sync_id)
            error = clip_text(f"internal error: {type(exc).__name__}: {exc}")
        finished = self._clock()

        sync_ids = list(job.report_for)
        eventful = error is not None or (outcome is not None and outcome.eventful)
        if eventful and event.sync_id not in sync_ids:
            sync_ids.append(event.sync_id)
        reports = [
            Report(
                report_id=uuid.uuid4().hex,
                host=self._host,
                sync_id=sync_id,
                epoch=event.epoch,
                seq=event.seq,
                state_digest=event.state_digest,
                pattern=outcome.pattern if outcome else None,
                services=dict(outcome.services) if outcome else {},
                installed=dict(outcome.installed) if outcome else {},
                started_at=started,
                finished_at=finished,
                error=error,
            )
            for sync_id in sync_ids
        ]
        if outcome is not None and outcome.pulled:
            log.info(
                "sync %s: %s",
                event.sync_id,
                ", ".join(
                    f"{name} +{len(r.installed)} ={len(r.present)} !{len(r.failed)}"
                    for name, r in outcome.services.items()
                )
                or "no services",
            )
        return Synced(reports, dict(outcome.applied) if outcome else {})

    def remember(self, synced: Synced) -> None:
        self._memory.record(dict(synced.applied), synced.reports)


def start_daemon_thread(target: Callable[[], None]) -> None:
    # Daemon: an install that outlives the stop deadline must not keep the process alive;
    # its staging directory is cleaned up by the next start.
    threading.Thread(target=target, name="minion-sync", daemon=True).start()


class SyncWorker:
    """One sync at a time; events arriving meanwhile are merged into one pending job."""

    def __init__(
        self,
        work: Callable[[PendingSync], None],
        spawn: Callable[[Callable[[], None]], None] = start_daemon_thread,
    ) -> None:
        self._work = work
        self._spawn = spawn
        self._lock = threading.Condition()
        self._pending: PendingSync | None = None
        self._running = False
        self._cancelled = False

    @property
    def busy(self) -> bool:
        return self._running

    def submit(self, event: SyncEvent, report: bool) -> None:
        with self._lock:
            if self._cancelled:
                return
            if self._pending is None:
                self._pending = PendingSync(event, [])
            else:
                self._pending.event = event  # events are desired state: the newest wins
            if report and event.sync_id not in self._pending.report_for:
                self._pending.report_for.append(event.sync_id)
            if not self._running:
                self._running = True
                self._spawn(self._loop)

    def _loop(self) -> None:
        while True:
            with self._lock:
                job = self._pending
                self._pending = None
                if job is None or self._cancelled:
                    self._running = False
                    self._lock.notify_all()
                    return
            try:
                self._work(job)
            except Cancelled:
                pass
            except Exception:  # never let the worker die silently
                log.exception("the sync worker failed")

    def cancel(self) -> None:
        """Take no new work; the sync in progress stops before its downloads if it can."""
        with self._lock:
            self._cancelled = True
            self._pending = None

    def wait_idle(self, timeout_s: float) -> bool:
        with self._lock:
            return self._lock.wait_for(lambda: not self._running, timeout_s)
