"""The watchers: Consul's client rules for the registry, change detection for the store."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable

import pytest

from daybook.errors import ConfigError, RegistryError, StoreError
from daybook.model.ids import versions_digest
from daybook.model.mappings import MappingTable
from daybook.model.names import AssetRef
from daybook.registry.base import Snapshot
from daybook.store.base import AssetInfo
from master.changes import Change, DigestsChanged, Fresh, MappingsChanged
from master.pacing import BACKOFF_MAX_S, Pacer, backoff_s
from master.registry_watcher import RegistryWatcher, TokenBucket
from master.store_watcher import StoreWatcher, digests_of


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_token_bucket_allows_a_burst_of_two_then_paces() -> None:
    clock = FakeClock()
    bucket = TokenBucket(interval_s=1.0, burst=2, clock=clock)
    assert bucket.delay_s() == 0.0
    assert bucket.delay_s() == 0.0
    assert bucket.delay_s() == pytest.approx(1.0)
    clock.now = 5.0  # refilled, but never beyond the burst
    assert bucket.delay_s() == 0.0
    assert bucket.delay_s() == 0.0
    assert bucket.delay_s() > 0


def test_backoff_grows_jitters_and_is_capped() -> None:
    rng = random.Random(1)
    first = [backoff_s(1, rng) for _ in range(50)]
    assert all(0.125 <= d <= 0.25 for d in first)
    assert len(set(first)) > 1
    assert 1.0 <= backoff_s(4, rng) <= 2.0
    assert backoff_s(1000, rng) <= BACKOFF_MAX_S


class ScriptedRegistry:
    """Answers watch() from a script; each entry is a Snapshot or an exception."""

    url = "consul://fake"

    def __init__(self, script: list[Snapshot | Exception]) -> None:
        self.script = script
        self.calls: list[int] = []
        self.on_last: Callable[[], None] = lambda: None

    def watch(self, index: int, timeout_s: float) -> Snapshot:
        self.calls.append(index)
        step = self.script.pop(0)
        if not self.script:
            self.on_last()
        if isinstance(step, Exception):
            raise step
        return step

    def read(self) -> Snapshot:
        return self.watch(0, 0)


def run_watcher(
    script: list[Snapshot | Exception], monkeypatch: pytest.MonkeyPatch
) -> tuple[list[Change], list[int], RegistryWatcher]:
    registry = ScriptedRegistry(script)
    posted: list[Change] = []
    watcher = RegistryWatcher(registry, posted.append, blocking=True, interval_s=0.0)
    registry.on_last = watcher.stop
    # The watcher would pause between rounds; the script runs straight through.
    monkeypatch.setattr("master.registry_watcher.backoff_s", lambda *_: 0.0)
    watcher.run()
    return posted, registry.calls, watcher


def test_the_registry_index_is_followed_and_reset_when_it_goes_backwards(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    web: MappingTable = {"web-*": ("web",)}
    posted, calls, _ = run_watcher(
        [Snapshot(web, 10), Snapshot(web, 12), Snapshot(web, 5), Snapshot(web, 6)], monkeypatch
    )
    assert calls == [0, 10, 12, 0]
    assert posted == [MappingsChanged(web)]  # data compared, not indexes


def test_an_index_of_zero_is_never_blocked_on(monkeypatch: pytest.MonkeyPatch) -> None:
    _, calls, _ = run_watcher([Snapshot({}, 0), Snapshot({}, 0)], monkeypatch)
    assert calls == [0, 1]


def test_changes_are_posted_and_errors_reset_the_index_and_log_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    one: MappingTable = {"web-*": ("web",)}
    two: MappingTable = {"web-*": ("web", "api")}
    caplog.set_level(logging.DEBUG, logger="master.registry_watcher")
    posted, calls, watcher = run_watcher(
        [
            Snapshot(one, 3),
            RegistryError("consul is down"),
            RegistryError("consul is down"),
            RegistryError("consul is down"),
            Snapshot(one, 3),
            Snapshot(two, 4),
        ],
        monkeypatch,
    )
    assert calls == [0, 3, 0, 0, 0, 3]
    assert posted == [MappingsChanged(one), MappingsChanged(two)]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2  # the fault once, the recovery once
    assert "consul is down" in warnings[0].getMessage()
    assert "readable again" in warnings[1].getMessage()
    assert watcher.failures == 0


def test_a_request_the_registry_refuses_is_an_error_every_time_and_not_fatal(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    web: MappingTable = {"web-*": ("web",)}
    refused = ConfigError("the registry refused the request (HTTP 400): Invalid namespace")
    posted, _calls, watcher = run_watcher([Snapshot(web, 3), refused, refused], monkeypatch)
    assert posted == [MappingsChanged(web)]  # the last mappings stand
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 2
    assert "Invalid namespace" in errors[0].getMessage()
    assert watcher.failures == 2


def test_the_file_registry_is_polled_and_refreshed_on_request() -> None:
    registry = ScriptedRegistry([Snapshot({"a": ("x",)}, 1), Snapshot({"a": ("x",)}, 1)])
    posted: list[Change] = []
    watcher = RegistryWatcher(registry, posted.append, blocking=False, interval_s=0.0)
    assert watcher.refreshable
    registry.on_last = watcher.stop
    watcher.refresh()
    watcher.run()
    assert posted == [MappingsChanged({"a": ("x",)}), Fresh("registry")]


def test_a_refresh_is_confirmed_even_when_the_read_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    registry = ScriptedRegistry([RegistryError("down")])
    posted: list[Change] = []
    watcher = RegistryWatcher(registry, posted.append, blocking=False, interval_s=0.0)
    registry.on_last = watcher.stop
    monkeypatch.setattr("master.registry_watcher.backoff_s", lambda *_: 0.0)
    watcher.refresh()
    watcher.run()
    assert posted == [Fresh("registry")]


def test_a_blocking_registry_is_not_refreshable() -> None:
    watcher = RegistryWatcher(ScriptedRegistry([]), print, blocking=True, interval_s=1.0)
    assert not watcher.refreshable


def test_the_pacer_is_cut_short_by_a_refresh_or_a_stop() -> None:
    pacer = Pacer()
    pacer.refresh()
    started = time.monotonic()
    pacer.pause(30.0)
    assert time.monotonic() - started < 5.0
    assert pacer.take_refresh()
    assert not pacer.take_refresh()
    pacer.stop()
    pacer.pause(30.0)
    assert pacer.stopped


def asset(service: str, version: str) -> AssetInfo:
    return AssetInfo(AssetRef(service, version), size=1, modified=0.0)


def test_digests_group_versions_by_service() -> None:
    digests = digests_of([asset("web", "1"), asset("api", "3"), asset("web", "2")])
    assert digests == {"api": versions_digest(["3"]), "web": versions_digest(["1", "2"])}


class ScriptedStore:
    url = "file:///fake"

    def __init__(self, script: list[list[AssetInfo] | Exception]) -> None:
        self.script = script
        self.on_last: Callable[[], None] = lambda: None
        self.heads: list[AssetRef] = []

    def stat(self, ref: AssetRef) -> AssetInfo:
        # As S3: the SHA-256 comes with a HEAD, not with the listing.
        self.heads.append(ref)
        return AssetInfo(ref, size=1, modified=1.0, sha256=ref.version * 64)

    def list_assets(self, service: str | None = None) -> list[AssetInfo]:
        step = self.script.pop(0)
        if not self.script:
            self.on_last()
        if isinstance(step, Exception):
            raise step
        return step


def test_the_store_watcher_posts_only_changes_and_survives_errors(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = ScriptedStore(
        [
            [asset("web", "1")],
            [asset("web", "1")],
            StoreError("bucket unreachable"),
            [asset("web", "1"), asset("web", "2")],
        ]
    )
    posted: list[Change] = []
    monkeypatch.setattr("master.store_watcher.backoff_s", lambda *_: 0.0)
    watcher = StoreWatcher(store, posted.append, interval_s=0.0)
    store.on_last = watcher.stop
    watcher.run()
    changes = [change for change in posted if isinstance(change, DigestsChanged)]
    assert [change.digests for change in changes] == [
        {"web": versions_digest(["1"])},
        {"web": versions_digest(["1", "2"])},
    ]
    # Each asset's SHA-256 is asked for once, and kept with the listing's size and time.
    assert store.heads == [AssetRef("web", "1"), AssetRef("web", "2")]
    assert changes[-1].assets[AssetRef("web", "2")] == AssetInfo(
        AssetRef("web", "2"), size=1, modified=0.0, sha256="2" * 64
    )


def test_the_store_watcher_posts_a_version_whose_bytes_changed() -> None:
    replaced = AssetInfo(AssetRef("web", "1"), size=1, modified=5.0)
    store = ScriptedStore([[asset("web", "1")], [replaced]])
    posted: list[Change] = []
    watcher = StoreWatcher(store, posted.append, interval_s=0.0)
    store.on_last = watcher.stop
    watcher.run()
    changes = [change for change in posted if isinstance(change, DigestsChanged)]
    # The same versions, so the same digests; but the listing differs, so it goes out.
    assert len(changes) == 2
    assert changes[0].digests == changes[1].digests
    assert store.heads == [AssetRef("web", "1")] * 2


def test_an_unexpected_exception_does_not_kill_a_watcher(monkeypatch: pytest.MonkeyPatch) -> None:
    store = ScriptedStore([ZeroDivisionError("bug"), [asset("web", "1")]])
    posted: list[Change] = []
    monkeypatch.setattr("master.store_watcher.backoff_s", lambda *_: 0.0)
    watcher = StoreWatcher(store, posted.append, interval_s=0.0)
    store.on_last = watcher.stop
    watcher.refresh()
    watcher.run()
    # The failed read still confirms the refresh; the next one brings the versions.
    assert posted == [Fresh("store"), DigestsChanged({"web": versions_digest(["1"])})]
