"""The minion's sync loop: planning by digest, applying through the installer, coalescing,
and what it remembers across restarts."""

from __future__ import annotations

import hashlib
import logging
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from archives import make_asset

from daybook import wire
from daybook.errors import LockError
from daybook.install.installer import Installer, InstallLock
from daybook.model.ids import EMPTY_DIGEST, blob_digest, versions_digest
from daybook.model.messages import SyncEvent
from daybook.model.names import AssetRef
from daybook.model.patterns import PatternTable
from daybook.model.state import DesiredState, EncodedState
from daybook.store.base import AssetInfo, AssetStream
from daybook.store.local import LocalStore
from minion.desired import DesiredStateCache
from minion.install_child import EXIT_ORPHANED, ChildInstaller, InstallChildError, InstallJob
from minion.memory import AppliedService, MinionMemory
from minion.sync import Cancelled, PendingSync, ServiceApplier, Syncer, SyncWorker, plan

WAIT_S = 10.0


class CountingStore:
    """A LocalStore that counts every request, as S3 would bill them."""

    def __init__(self, inner: LocalStore) -> None:
        self.inner = inner
        self.requests = 0

    @property
    def url(self) -> str:
        return self.inner.url

    def list_assets(self, service: str | None = None) -> list[AssetInfo]:
        self.requests += 1
        return self.inner.list_assets(service)

    def open(self, ref: AssetRef) -> AssetStream:
        self.requests += 1
        return self.inner.open(ref)

    def stat(self, ref: AssetRef) -> AssetInfo | None:
        self.requests += 1
        return self.inner.stat(ref)

    def close(self) -> None:
        pass


def push(store: LocalStore, tmp_path: Path, service: str, version: str) -> None:
    path = make_asset(tmp_path, service, version)
    sha256 = hashlib.sha256(path.read_bytes()).hexdigest()
    store.upload(path, AssetRef(service, version), sha256=sha256)


def desired_for(store: LocalStore, mappings: dict[str, tuple[str, ...]]) -> DesiredState:
    versions: dict[str, list[str]] = {}
    for info in store.list_assets():
        versions.setdefault(info.service, []).append(info.version)
    return DesiredState(mappings, {s: versions_digest(v) for s, v in versions.items()})


class Fixture:
    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.local = LocalStore(tmp_path / "store")
        self.store = CountingStore(self.local)
        self.install_dir = tmp_path / "install"
        self.memory = MinionMemory(tmp_path / "data", self.install_dir)
        self.splays = 0
        self.spreads: list[float | None] = []
        self.splay_result = True
        self.applier = ServiceApplier(
            Installer(self.store, self.install_dir), self.memory, self.splay
        )

    def splay(self, spread_s: float | None) -> bool:
        self.splays += 1
        self.spreads.append(spread_s)
        return self.splay_result

    def apply(self, mappings: dict[str, tuple[str, ...]], host: str = "web-1") -> Any:
        desired = desired_for(self.local, mappings)
        outcome = self.applier.apply(desired, PatternTable(desired.mappings).resolve(host))
        self.memory.record(dict(outcome.applied), [])
        self.memory.save()
        return outcome


@pytest.fixture
def fx(tmp_path: Path) -> Fixture:
    return Fixture(tmp_path)


# -- plan -------------------------------------------------------------------------------------


def test_plan_skips_services_whose_digest_and_files_match() -> None:
    desired = DesiredState({}, {"web": versions_digest(["1", "2"]), "api": versions_digest(["3"])})
    memory = {
        "web": AppliedService(versions_digest(["1", "2"]), ("1", "2")),
        "api": AppliedService(versions_digest(["2"]), ("2",)),
        "gone": AppliedService(EMPTY_DIGEST, ()),
    }
    installed = {"web": ["1", "2", "0.9"], "api": ["2"], "gone": [], "new": []}
    steps = plan(["web", "api", "new", "gone"], desired, memory.get, installed)
    assert steps.unchanged == {"web": ("1", "2"), "gone": ()}
    assert steps.changed == ("api", "new")


def test_plan_pulls_again_when_an_installed_version_was_removed() -> None:
    desired = DesiredState({}, {"web": versions_digest(["1", "2"])})
    memory = {"web": AppliedService(versions_digest(["1", "2"]), ("1", "2"))}
    steps = plan(["web"], desired, memory.get, {"web": ["1"]})
    assert steps.changed == ("web",)


# -- applier ----------------------------------------------------------------------------------


def test_a_noop_sync_makes_no_store_request_and_no_splay(fx: Fixture) -> None:
    push(fx.local, fx.tmp_path, "web", "1")
    push(fx.local, fx.tmp_path, "web", "2")
    first = fx.apply({"web-*": ("web",)})
    assert first.services["web"].installed == ("1", "2")
    assert first.pulled
    assert fx.splays == 1
    before = fx.store.requests

    again = fx.apply({"web-*": ("web",)})
    assert fx.store.requests == before
    assert fx.splays == 1
    assert not again.pulled
    assert again.services["web"].present == ("1", "2")
    assert again.services["web"].installed == ()
    assert again.installed == {"web": ("1", "2")}
    assert not again.eventful


def test_only_the_changed_service_is_pulled(fx: Fixture) -> None:
    push(fx.local, fx.tmp_path, "web", "1")
    push(fx.local, fx.tmp_path, "api", "1")
    fx.apply({"*": ("web", "api")})
    push(fx.local, fx.tmp_path, "api", "2")
    before = fx.store.requests
    outcome = fx.apply({"*": ("web", "api")})
    assert outcome.services["api"].installed == ("2",)
    assert outcome.services["web"].present == ("1",)
    # One listing of api and one download; nothing for web.
    assert fx.store.requests - before == 2
    assert outcome.eventful


def test_a_removed_install_is_restored(fx: Fixture) -> None:
    push(fx.local, fx.tmp_path, "web", "1")
    fx.apply({"*": ("web",)})
    push(fx.local, fx.tmp_path, "web", "10")
    push(fx.local, fx.tmp_path, "web", "9")
    assert fx.apply({"*": ("web",)}).services["web"].present == ("1",)
    # Versions are remembered, and answered, in version order.
    assert fx.apply({"*": ("web",)}).services["web"].present == ("1", "9", "10")
    shutil.rmtree(fx.install_dir / "web" / "1")
    outcome = fx.apply({"*": ("web",)})
    assert outcome.services["web"].installed == ("1",)


def test_a_failed_version_is_retried_next_time(fx: Fixture) -> None:
    push(fx.local, fx.tmp_path, "web", "1")
    (fx.local.root / "web-1.tar.gz").write_bytes(b"not a tarball")
    failed = fx.apply({"*": ("web",)})
    assert "1" in failed.services["web"].failed
    assert fx.memory.applied("web") is None
    before = fx.store.requests
    fx.apply({"*": ("web",)})
    assert fx.store.requests > before


def test_a_host_no_pattern_matches_has_nothing_to_do(fx: Fixture) -> None:
    outcome = fx.apply({"db-*": ("db",)}, host="web-1")
    assert outcome.pattern is None
    assert outcome.services == {}
    assert fx.store.requests == 0


def test_stopping_during_the_splay_cancels_before_any_download(fx: Fixture) -> None:
    push(fx.local, fx.tmp_path, "web", "1")
    fx.splay_result = False
    with pytest.raises(Cancelled):
        fx.apply({"*": ("web",)})
    assert not (fx.install_dir / "web" / "1").exists()


# -- the install child ------------------------------------------------------------------------


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        threading.Event().wait(0.01)


def test_an_install_child_answers_exactly_as_the_installer_would(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    in_process, in_child = Fixture(tmp_path / "a"), Fixture(tmp_path / "b")
    children = ChildInstaller(in_child.local.url, in_child.install_dir, max_parallel=2)
    in_child.applier = ServiceApplier(
        Installer(in_child.store, in_child.install_dir),
        in_child.memory,
        in_child.splay,
        children.sync,
    )
    for fx in (in_process, in_child):
        for service, version in (("web", "1"), ("web", "10"), ("web", "9"), ("api", "1")):
            push(fx.local, fx.tmp_path, service, version)
        (fx.local.root / "api-2.tar.gz").write_bytes(b"not a tarball")
    # web installs, api half fails, db has no version at all.
    mappings = {"web-*": ("web", "api", "db")}
    expected = in_process.apply(mappings)
    outcome = in_child.apply(mappings)
    assert children.children_started == 1
    assert outcome == expected
    assert outcome.services["web"].installed == ("1", "9", "10")
    assert list(outcome.services["api"].failed) == ["2"]
    run = in_child.install_dir / "web" / "10" / "bin" / "run"
    assert run.read_bytes() == b"#!/bin/sh\necho web 10\n"

    # A no-op sync starts no child.
    in_child.apply({"web-*": ("web",)})
    assert children.children_started == 1


def test_an_install_child_fails_with_the_installers_own_error(fx: Fixture) -> None:
    push(fx.local, fx.tmp_path, "web", "1")
    installer = Installer(fx.local, fx.install_dir, lock_timeout_s=0.1)
    children = ChildInstaller(fx.local.url, fx.install_dir, max_parallel=1, lock_timeout_s=0.1)
    with InstallLock(fx.install_dir):
        with pytest.raises(LockError) as in_process:
            installer.sync(["web"])
        with pytest.raises(InstallChildError) as in_child:
            children.sync(["web"])
    assert str(in_child.value) == str(in_process.value)
    assert not (fx.install_dir / "web" / "1").exists()


@pytest.mark.parametrize(
    ("code", "error"),
    [
        ("import os, signal; os.kill(os.getpid(), signal.SIGKILL)", "killed by SIGKILL"),
        ("print('garbage')", "no usable answer (exit status 0)"),
        ("import sys; sys.exit(1)", "no usable answer (exit status 1)"),
    ],
)
def test_an_install_child_that_dies_fails_the_sync(tmp_path: Path, code: str, error: str) -> None:
    children = ChildInstaller(
        "file:///nowhere", tmp_path, max_parallel=1, argv=[sys.executable, "-c", code]
    )
    with pytest.raises(InstallChildError, match=re.escape(error)):
        children.sync(["web"])


def test_a_stopping_minion_kills_its_install_child_and_cancels_the_sync(tmp_path: Path) -> None:
    # A child that never answers, like one stuck in a long extraction.
    stuck = [sys.executable, "-c", "import time; time.sleep(60)"]
    children = ChildInstaller("file:///nowhere", tmp_path, max_parallel=1, argv=stuck)
    raised: list[BaseException] = []

    def sync() -> None:
        try:
            children.sync(["web"])
        except BaseException as exc:
            raised.append(exc)

    worker = threading.Thread(target=sync)
    worker.start()
    wait_until(lambda: children.children_started == 1, "the install child to start")
    children.stop()  # asks, and the stuck child does not listen
    children.kill()
    worker.join(WAIT_S)
    assert not worker.is_alive()
    assert [type(exc) for exc in raised] == [Cancelled]
    with pytest.raises(Cancelled):
        children.sync(["web"])  # and no child starts after the kill
    assert children.children_started == 1


def test_an_install_child_whose_minion_is_gone_exits_at_once(fx: Fixture) -> None:
    push(fx.local, fx.tmp_path, "web", "1")
    job = InstallJob(fx.local.url, str(fx.install_dir), ("web",), 1, 60.0, logging.WARNING)
    # The held lock keeps the child from installing: it can only leave by noticing.
    with InstallLock(fx.install_dir):
        child = subprocess.Popen(
            [sys.executable, "-m", "minion.install_child"],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        assert child.stdin is not None
        assert child.stderr is not None
        child.stdin.write(wire.to_json(job) + b"\n")
        child.stdin.close()  # what the kernel does when the minion dies
        try:
            status = child.wait(WAIT_S)
        finally:
            child.kill()
            child.wait()
        log = child.stderr.read().decode()
        child.stderr.close()
        assert status == EXIT_ORPHANED, log
        assert "the minion is gone" in log
    assert not (fx.install_dir / "web" / "1").exists()


# -- syncer -----------------------------------------------------------------------------------


def event_for(state: EncodedState, sync_id: str = "s1", seq: int = 1) -> SyncEvent:
    return SyncEvent.carrying(state, epoch=1, seq=seq, sync_id=sync_id, target="*", issued_at=1.0)


def test_the_syncer_reports_once_per_sync_id_and_remembers(fx: Fixture) -> None:
    push(fx.local, fx.tmp_path, "web", "1")
    state = wire.encode_state(desired_for(fx.local, {"web-*": ("web",)}))
    syncer = Syncer("web-1", fx.applier, DesiredStateCache(), fx.memory)
    synced = syncer.run(PendingSync(event_for(state, "s2"), ["s1", "s2"]))
    reports = synced.reports
    assert not (fx.tmp_path / "data" / "minion-state.json").exists()  # nothing written yet
    syncer.remember(synced)
    fx.memory.save()
    assert [r.sync_id for r in reports] == ["s1", "s2"]
    assert len({r.report_id for r in reports}) == 2
    assert all(r.ok and r.pattern == "web-*" for r in reports)
    assert reports[0].services["web"].installed == ("1",)
    assert reports[0].state_digest == state.digest
    restarted = MinionMemory(fx.tmp_path / "data", fx.install_dir)
    assert restarted.reported() == ["s1", "s2"]
    assert len(restarted.outbox()) == 2
    assert restarted.applied("web") is not None

    # A republish of a reported sync changes nothing: no report.
    assert syncer.run(PendingSync(event_for(state, "s2", seq=2), [])).reports == []


def test_downloads_start_within_the_spread_the_event_asks_for(fx: Fixture) -> None:
    push(fx.local, fx.tmp_path, "web", "1")
    state = wire.encode_state(desired_for(fx.local, {"web-*": ("web",)}))
    syncer = Syncer("web-1", fx.applier, DesiredStateCache(), fx.memory)
    event = SyncEvent.carrying(
        state, epoch=1, seq=1, sync_id="s1", target="*", issued_at=1.0, spread_s=0.03
    )
    syncer.run(PendingSync(event, ["s1"]))
    assert fx.spreads == [0.03]


def test_work_done_for_an_already_reported_sync_is_reported(fx: Fixture) -> None:
    push(fx.local, fx.tmp_path, "web", "1")
    state = wire.encode_state(desired_for(fx.local, {"web-*": ("web",)}))
    syncer = Syncer("web-1", fx.applier, DesiredStateCache(), fx.memory)
    reports = syncer.run(PendingSync(event_for(state, "s1"), [])).reports
    assert [r.sync_id for r in reports] == ["s1"]


def test_a_state_that_cannot_be_decoded_gives_an_error_report(fx: Fixture) -> None:
    bad = EncodedState(b"garbage", blob_digest(b"garbage"))
    syncer = Syncer("web-1", fx.applier, DesiredStateCache(), fx.memory)
    (report,) = syncer.run(PendingSync(event_for(bad), ["s1"])).reports
    assert not report.ok
    assert report.error is not None
    assert "zlib" in report.error


def test_the_state_cache_decodes_each_state_once() -> None:
    cache = DesiredStateCache(max_entries=2)
    states = [wire.encode_state(DesiredState({"h": (f"s{i}",)}, {})) for i in range(3)]
    first = cache.get(states[0])
    assert cache.get(states[0]) is first
    cache.get(states[1])
    cache.get(states[2])
    assert cache.get(states[0]) is not first  # evicted, decoded again


# -- memory -----------------------------------------------------------------------------------


def test_memory_forgets_digests_taken_for_another_install_dir(tmp_path: Path) -> None:
    memory = MinionMemory(tmp_path, tmp_path / "a")
    memory.record({"web": AppliedService(EMPTY_DIGEST, ())}, [])
    memory.save()
    assert MinionMemory(tmp_path, tmp_path / "a").applied("web") is not None
    assert MinionMemory(tmp_path, tmp_path / "b").applied("web") is None


def test_memory_survives_corrupt_files(tmp_path: Path) -> None:
    state = tmp_path / "minion-state.json"
    state.write_text("{not json")
    memory = MinionMemory(tmp_path, tmp_path / "install")
    assert memory.outbox() == []
    assert memory.reported() == []
    state.write_text('{"format": 1, "outbox": ["!!", 5, ""], "reported": ["ok", "no way"]}')
    memory = MinionMemory(tmp_path, tmp_path / "install")
    assert memory.outbox() == []
    assert memory.reported() == ["ok"]


def test_the_outbox_keeps_only_the_latest_reports(tmp_path: Path) -> None:
    from messages import report

    memory = MinionMemory(tmp_path, tmp_path / "install", keep_reports=3, keep_reported=4)
    memory.record({}, [report("web-1", f"s{i}", finished_at=10.0 + i) for i in range(6)])
    assert len(memory.outbox()) == 3
    assert memory.reported() == ["s2", "s3", "s4", "s5"]


# -- worker -----------------------------------------------------------------------------------


def test_events_arriving_during_a_sync_coalesce_into_one_run_of_the_newest() -> None:
    state = wire.encode_state(DesiredState({}, {}))
    started = threading.Event()
    release = threading.Event()
    jobs: list[PendingSync] = []
    done = threading.Event()

    def work(job: PendingSync) -> None:
        jobs.append(PendingSync(job.event, list(job.report_for)))
        if len(jobs) == 1:
            started.set()
            assert release.wait(WAIT_S)
        else:
            done.set()

    runner = SyncWorker(work)
    runner.submit(event_for(state, "s1", seq=1), report=True)
    assert started.wait(WAIT_S)
    assert runner.busy
    runner.submit(event_for(state, "s2", seq=2), report=True)
    runner.submit(event_for(state, "s1", seq=3), report=False)
    runner.submit(event_for(state, "s3", seq=4), report=True)
    release.set()
    assert done.wait(WAIT_S)
    assert runner.wait_idle(WAIT_S)
    assert len(jobs) == 2
    assert jobs[0].report_for == ["s1"]
    assert jobs[1].event.seq == 4
    assert jobs[1].report_for == ["s2", "s3"]
    assert not runner.busy


def test_a_cancelled_runner_takes_no_more_work() -> None:
    ran: list[PendingSync] = []
    runner = SyncWorker(ran.append, spawn=lambda target: target())
    runner.cancel()
    runner.submit(event_for(wire.encode_state(DesiredState({}, {}))), report=True)
    assert ran == []
    assert runner.wait_idle(0.0)


def test_a_crashing_job_does_not_kill_the_runner() -> None:
    calls: list[int] = []

    def work(job: PendingSync) -> None:
        calls.append(job.event.seq)
        if job.event.seq == 1:
            raise RuntimeError("bug")

    runner = SyncWorker(work, spawn=lambda target: target())
    state = wire.encode_state(DesiredState({}, {}))
    runner.submit(event_for(state, seq=1), report=True)
    runner.submit(event_for(state, seq=2), report=True)
    assert calls == [1, 2]
