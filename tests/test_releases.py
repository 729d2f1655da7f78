"""The release lifecycle on a host: the version choice and retention rules (pure), the
`current` link and removals under a crash at every step, "in use" read from /proc, and
the minion's and the install child's lifecycle step."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from archives import make_asset
from unprivileged import run_unprivileged

from daybook.install.hooks import HookRunner
from daybook.install.installer import (
    LINK_TEMP_PREFIX,
    REMOVING_PREFIX,
    Installer,
    installed_versions,
)
from daybook.install.releases import ReleaseKeeper, read_current, remove_version, switch_current
from daybook.install.removal import remove_tree
from daybook.install.usage import paths_in_use
from daybook.model.names import AssetRef
from daybook.model.pins import Pin
from daybook.model.releases import (
    ReleasePolicy,
    Retention,
    Selection,
    choose_current,
    pinned_versions,
    plan_retention,
    wanted_versions,
)
from daybook.model.results import ServiceResult
from daybook.store.local import LocalStore
from daybook.views import service_result_json

# -- the pure rules -------------------------------------------------------------------------

STORE = ["1.0", "1.1", "1.2", "1.10"]  # as the store lists them: 1.10 is the newest


@pytest.mark.parametrize(
    ("installed", "selection", "wanted"),
    [
        ([], Selection(), STORE),
        ([], Selection(keep=2), ["1.2", "1.10"]),
        (["1.0", "1.1"], Selection(keep=2), ["1.2", "1.10"]),
        # The pinned older version is installed too, beside the newest N.
        ([], Selection(keep=2, pinned="1.0"), ["1.0", "1.2", "1.10"]),
        ([], Selection(keep=0, pinned="1.0"), STORE),
        # A newer installed version that left the store counts towards N: no version is
        # downloaded only to be removed by retention right after.
        (["2.0"], Selection(keep=2), ["1.10"]),
        ([], Selection(keep=9), STORE),
    ],
)
def test_which_versions_a_host_installs(
    installed: list[str], selection: Selection, wanted: list[str]
) -> None:
    assert wanted_versions(STORE, installed, selection) == wanted


@pytest.mark.parametrize(
    ("installed", "pinned", "current"),
    [
        ([], None, None),
        (["1.0", "1.10", "1.2"], None, "1.10"),
        (["1.0", "1.10", "1.2"], "1.0", "1.0"),
        # A pin to a version that is not (yet, or completely) installed changes nothing.
        (["1.0", "1.2"], "1.10", "1.2"),
    ],
)
def test_which_version_current_points_at(
    installed: list[str], pinned: str | None, current: str | None
) -> None:
    assert choose_current(installed, pinned) == current


@pytest.mark.parametrize(
    ("installed", "keep", "current", "pinned", "retention"),
    [
        (["1", "2", "3", "4"], 0, "1", None, Retention()),
        (["1", "2", "3", "4"], 2, "4", None, Retention(remove=("2", "1"))),
        (["1", "2", "3", "4"], 2, "1", None, Retention(remove=("2",), kept={"1": "current"})),
        (["1", "2", "3", "4"], 2, "4", "2", Retention(remove=("1",), kept={"2": "pinned"})),
        (["1", "2", "3", "4"], 3, None, None, Retention(remove=("1",))),
        (["1", "2"], 2, None, None, Retention()),
    ],
)
def test_which_versions_retention_removes(
    installed: list[str], keep: int, current: str | None, pinned: str | None, retention: Retention
) -> None:
    assert plan_retention(installed, keep, current=current, pinned=pinned) == retention


def test_pins_per_host() -> None:
    pins = {
        "api": Pin("api", "1.0"),
        "web": Pin("web", "2", previous="1", hosts=("web-1",)),
    }
    assert pinned_versions(pins, ["api", "web", "db"], "web-1") == {
        "api": "1.0",
        "web": "2",
        "db": None,
    }
    assert pinned_versions(pins, ["web"], "web-2") == {"web": "1"}


# -- the file work --------------------------------------------------------------------------


def push(store: LocalStore, build: Path, service: str, version: str) -> None:
    path = make_asset(build, service, version)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    store.upload(path, AssetRef(service, version), sha256=digest)


class Host:
    """A store, an install dir and a keeper with the given policy, as `daybook pull` has."""

    def __init__(self, tmp_path: Path, policy: ReleasePolicy, **keeper: object) -> None:
        self.tmp_path = tmp_path
        self.store = LocalStore(tmp_path / "store")
        self.build = tmp_path / "build"
        self.build.mkdir(parents=True, exist_ok=True)
        self.install_dir = tmp_path / "install"
        self.installer = Installer(self.store, self.install_dir)
        self.keeper = ReleaseKeeper(
            self.install_dir,
            lambda _service: policy,
            HookRunner(tmp_path / "hooks", timeout_s=10),
            **keeper,  # type: ignore[arg-type]
        )

    def push(self, *versions: str, service: str = "web") -> None:
        for version in versions:
            push(self.store, self.build, service, version)

    def pull(self, pinned: str | None = None, service: str = "web") -> ServiceResult:
        pins = {service: pinned}
        outcome = self.installer.sync([service], self.keeper.selections([service], pins))
        return self.keeper.settle_all(self.installer, outcome, pins).results[service]

    @property
    def web(self) -> Path:
        return self.install_dir / "web"


def test_keep_two_with_current_and_a_pin(tmp_path: Path) -> None:
    host = Host(tmp_path, ReleasePolicy(keep_versions=2, activate=True))
    host.push("1", "2")
    first = host.pull()
    assert first.installed == ("1", "2")
    assert (first.current, first.previous, first.removed) == ("2", None, ())
    assert os.readlink(host.web / "current") == "2"  # relative

    host.push("3", "4")
    result = host.pull()
    assert result.installed == ("3", "4")
    assert (result.current, result.previous, result.removed) == ("4", "2", ("2", "1"))
    assert installed_versions(host.web) == ["3", "4"]
    assert (host.web / "current" / "bin" / "run").read_bytes().startswith(b"#!/bin/sh")

    # A pin to a removed version installs it again, points `current` at it and keeps it.
    pinned = host.pull(pinned="1")
    assert pinned.installed == ("1",)
    assert (pinned.current, pinned.previous) == ("1", "4")
    assert pinned.removed == ()
    assert pinned.kept == {"1": "current"}
    assert installed_versions(host.web) == ["1", "3", "4"]

    # Unpinned: back to the newest, and the old pin goes.
    unpinned = host.pull()
    assert (unpinned.current, unpinned.previous, unpinned.removed) == ("4", "1", ("1",))


def test_nothing_configured_changes_nothing(tmp_path: Path) -> None:
    host = Host(tmp_path, ReleasePolicy())
    host.push("1", "2", "3")
    assert host.pull() == ServiceResult(installed=("1", "2", "3"))
    assert not (host.web / "current").exists()
    assert installed_versions(host.web) == ["1", "2", "3"]


def test_a_version_named_current_is_refused_while_the_link_is_kept(tmp_path: Path) -> None:
    host = Host(tmp_path, ReleasePolicy(activate=True))
    host.push("1", "current")
    result = host.pull()
    assert result.installed == ("1",)
    assert "name of the link" in result.failed["current"]
    assert not result.ok
    assert os.readlink(host.web / "current") == "1"
    assert installed_versions(host.web) == ["1"]  # the link is never listed as a version


def test_a_version_named_current_installed_before_activation_blocks_only_it(
    tmp_path: Path,
) -> None:
    Host(tmp_path, ReleasePolicy()).push("1", "current")
    Host(tmp_path, ReleasePolicy()).pull()  # activate off: both install
    host = Host(tmp_path, ReleasePolicy(keep_versions=1, activate=True))
    for _ in range(2):
        result = host.pull()
        assert result.error is not None
        assert "a version named 'current' is installed" in result.error
        assert str(host.web / "current") in result.error
        assert result.removed == ()  # not knowing what runs, retention removes nothing
        assert sorted(os.listdir(host.web)) == ["1", "current"]  # and no temp link
    assert (host.web / "current").is_dir()


def test_a_failed_link_switch_leaves_no_temp_link(tmp_path: Path) -> None:
    web = tmp_path / "web"
    (web / "1").mkdir(parents=True)
    (web / "current").mkdir()  # a directory in the link's place: the rename fails
    with pytest.raises(IsADirectoryError):
        switch_current(web, "1")
    assert sorted(os.listdir(web)) == ["1", "current"]


def test_the_current_version_is_never_removed(tmp_path: Path) -> None:
    host = Host(tmp_path, ReleasePolicy(keep_versions=1, activate=False))
    host.push("1", "2", "3")
    host.web.mkdir(parents=True)
    host.installer.sync(["web"])
    # Someone else (a previous configuration) left `current` on the oldest.
    switch_current(host.web, "1")
    result = host.pull()
    assert result.removed == ("2",)
    assert result.kept == {"1": "current"}
    assert installed_versions(host.web) == ["1", "3"]


def test_a_version_that_will_not_go_is_named_beside_those_that_went(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    host = Host(tmp_path, ReleasePolicy(keep_versions=1, activate=True))
    host.push("1", "2", "3")
    host.installer.sync(["web"])
    delete = remove_tree

    def stuck_on_1(path: Path) -> None:  # as a file made immutable (chattr +i) would be
        if path.name.startswith(f"{REMOVING_PREFIX}1-"):
            raise PermissionError(errno.EPERM, "Operation not permitted", str(path / "bin"))
        delete(path)

    monkeypatch.setattr("daybook.install.releases.remove_tree", stuck_on_1)
    result = host.pull()
    assert result.current == "3"
    assert result.removed == ("2",)
    assert result.error is not None
    assert "could not remove version 1: Operation not permitted" in result.error
    assert f"{REMOVING_PREFIX}1-" in result.error  # where its files are still
    assert service_result_json(result)["removed"] == ["2"]
    assert installed_versions(host.web) == ["3"]


# -- in use ---------------------------------------------------------------------------------


@pytest.fixture
def holder() -> Iterator[list[subprocess.Popen[bytes]]]:
    children: list[subprocess.Popen[bytes]] = []
    yield children
    for child in children:
        child.kill()
        child.wait()
        for pipe in (child.stdin, child.stdout):
            if pipe is not None:
                pipe.close()


HOLD_FILE = "import sys; f = open(sys.argv[1]); print('ready', flush=True); sys.stdin.read()"
HOLD_CWD = "import sys; print('ready', flush=True); sys.stdin.read()"


def start_holder(
    children: list[subprocess.Popen[bytes]], args: Sequence[str], cwd: Path | None = None
) -> subprocess.Popen[bytes]:
    child = subprocess.Popen(
        [sys.executable, "-c", *args], cwd=cwd, stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    children.append(child)
    assert child.stdout is not None
    assert child.stdout.readline() == b"ready\n"
    return child


def release(child: subprocess.Popen[bytes]) -> None:
    assert child.stdin is not None
    child.stdin.close()
    child.wait(timeout=10)


def test_a_version_in_use_is_kept_until_it_is_free(
    tmp_path: Path, holder: list[subprocess.Popen[bytes]]
) -> None:
    host = Host(tmp_path, ReleasePolicy(keep_versions=1, activate=True))
    host.push("1", "2", "3")
    host.installer.sync(["web"])
    open_file = start_holder(holder, [HOLD_FILE, str(host.web / "1" / "conf" / "app.toml")])
    in_cwd = start_holder(holder, [HOLD_CWD], cwd=host.web / "2" / "bin")
    assert paths_in_use([host.web / v for v in ("1", "2", "3")]) == {host.web / "1", host.web / "2"}

    result = host.pull()
    assert result.current == "3"
    assert result.removed == ()
    assert result.kept == {"1": "in use", "2": "in use"}
    assert installed_versions(host.web) == ["1", "2", "3"]

    release(open_file)
    assert host.pull().removed == ("1",)
    release(in_cwd)
    again = host.pull()
    assert (again.removed, again.kept) == (("2",), {})
    assert installed_versions(host.web) == ["3"]


def test_in_use_is_read_only_when_something_is_to_go(tmp_path: Path) -> None:
    scans: list[list[Path]] = []

    def in_use(dirs: Sequence[Path]) -> set[Path]:
        scans.append(list(dirs))
        return set()

    host = Host(tmp_path, ReleasePolicy(keep_versions=2), in_use=in_use)
    host.push("1", "2")
    host.pull()
    assert scans == []
    host.push("3")
    assert host.pull().removed == ("1",)
    assert scans == [[host.web / "1"]]


# -- a crash at every step ------------------------------------------------------------------


class Crash(BaseException):
    """A kill: nothing in the code under test may catch it and tidy up."""


def crash_at(step: str) -> object:
    def checkpoint(at: str) -> None:
        if at == step:
            raise Crash(step)

    return checkpoint


def check_sound(web: Path) -> None:
    """`current` resolves to a complete version or is absent; no version is half there."""
    current = web / "current"
    if current.is_symlink():
        assert read_current(web) in installed_versions(web)
        assert (current / "bin" / "run").is_file()
        assert (current / "conf" / "app.toml").is_file()
    for version in installed_versions(web):
        assert (web / version / "conf" / "app.toml").is_file()


@pytest.mark.parametrize("step", ["link-made", "link-moved", "hidden", "deleted"])
def test_a_crash_at_any_step_is_healed_by_the_next_run(tmp_path: Path, step: str) -> None:
    policy = ReleasePolicy(keep_versions=1, activate=True)
    host = Host(tmp_path, policy)
    host.push("1")
    host.pull()
    host.push("2")
    crashing = ReleaseKeeper(
        host.install_dir,
        lambda _s: policy,
        HookRunner(tmp_path / "hooks", timeout_s=10),
        checkpoint=crash_at(step),  # type: ignore[arg-type]
    )
    outcome = host.installer.sync(["web"], crashing.selections(["web"], {}))
    with pytest.raises(Crash):
        crashing.settle_all(host.installer, outcome, {})
    check_sound(host.web)

    result = host.pull()
    check_sound(host.web)
    assert result.current == "2"
    assert os.readlink(host.web / "current") == "2"
    assert installed_versions(host.web) == ["2"]
    assert sorted(os.listdir(host.web)) == ["2", "current"]  # no leftovers


# Pulls keeping one version, in a child process bound by file permissions: each pull's
# `removed` and what the service dir then holds.
KEEP_ONE_PULL = """
import hashlib, json, sys
from pathlib import Path
from archives import make_locked_asset
from daybook.install.hooks import HookRunner
from daybook.install.installer import Installer
from daybook.install.releases import ReleaseKeeper
from daybook.model.names import AssetRef
from daybook.model.releases import ReleasePolicy
from daybook.store.local import LocalStore

root = Path(sys.argv[1])
store, install = LocalStore(root / "store"), root / "install"
installer = Installer(store, install)
policy = ReleasePolicy(keep_versions=1)
keeper = ReleaseKeeper(install, lambda _s: policy, HookRunner(root / "hooks", timeout_s=10))
for version in ("1", "2"):
    path = make_locked_asset(root / "build", "web", version)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    store.upload(path, AssetRef("web", version), sha256=digest)
    outcome = installer.sync(["web"], keeper.selections(["web"], {}))
    result = keeper.settle_all(installer, outcome, {}).results["web"]
    left = sorted(p.name for p in (install / "web").iterdir())
    print(json.dumps([result.ok, list(result.removed), left]))
"""


def test_retention_removes_read_only_directories_without_root(tmp_path: Path) -> None:
    (tmp_path / "build").mkdir()
    child = run_unprivileged(KEEP_ONE_PULL, str(tmp_path))
    assert child.returncode == 0, child.stderr
    first, second = (json.loads(line) for line in child.stdout.splitlines())
    assert first == [True, [], ["1"]]
    assert second == [True, ["1"], ["2"]]  # no .removing-1-* tree left behind


def test_a_crash_in_the_middle_of_a_delete(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    host = Host(tmp_path, ReleasePolicy(keep_versions=1, activate=True))
    host.push("1")
    host.pull()
    host.push("2")

    def half_delete(path: str | Path, *args: object, **kwargs: object) -> None:
        os.unlink(Path(path) / "bin" / "run")  # one file gone, then the kill
        raise Crash("rmtree")

    with monkeypatch.context() as patched:
        patched.setattr("daybook.install.releases.remove_tree", half_delete)
        with pytest.raises(Crash):
            host.pull()
    check_sound(host.web)
    assert [n for n in os.listdir(host.web) if n.startswith(REMOVING_PREFIX)]
    assert installed_versions(host.web) == ["2"]  # the half-deleted one is out of sight

    assert host.pull().current == "2"
    assert sorted(os.listdir(host.web)) == ["2", "current"]


def test_the_link_switch_and_removal_steps_alone(tmp_path: Path) -> None:
    web = tmp_path / "web"
    (web / "1").mkdir(parents=True)
    (web / "2").mkdir()
    with pytest.raises(Crash):
        switch_current(web, "1", crash_at("link-made"))  # type: ignore[arg-type]
    assert not (web / "current").is_symlink()
    assert [n for n in os.listdir(web) if n.startswith(LINK_TEMP_PREFIX)]
    switch_current(web, "1")
    switch_current(web, "2")
    assert read_current(web) == "2"
    remove_version(web, "1")
    assert sorted(n for n in os.listdir(web) if not n.startswith(LINK_TEMP_PREFIX)) == [
        "2",
        "current",
    ]


# -- the minion's step, in process and through the install child ------------------------------


def test_a_minion_applies_the_lifecycle_to_unchanged_services(tmp_path: Path) -> None:
    """A pin change alone (no new version, same digest) still moves `current`."""
    from daybook.model.ids import versions_digest
    from daybook.model.patterns import PatternTable
    from daybook.model.state import DesiredState
    from minion.install_child import ChildInstaller
    from minion.memory import MinionMemory
    from minion.sync import ServiceApplier

    for name, in_child in (("inproc", False), ("child", True)):
        host = Host(tmp_path / name, ReleasePolicy(keep_versions=2, activate=True))
        host.push("1", "2", "3")
        memory = MinionMemory(host.tmp_path / "data", host.install_dir)
        children = ChildInstaller(host.store.url, host.install_dir, max_parallel=2)
        applier = ServiceApplier(
            host.installer,
            memory,
            lambda _spread: True,
            children.sync if in_child else None,
            host.keeper,
        )

        def apply(
            pins: dict[str, Pin], applier: ServiceApplier = applier, memory: MinionMemory = memory
        ) -> ServiceResult:
            state = DesiredState({"*": ("web",)}, {"web": versions_digest(["1", "2", "3"])}, pins)
            outcome = applier.apply(state, PatternTable(state.mappings).resolve("h1"), 0, "h1")
            memory.record(dict(outcome.applied), [])
            return outcome.services["web"]

        first = apply({})
        assert first.installed == ("2", "3")
        assert first.current == "3"
        assert children.children_started == (1 if in_child else 0)
        pinned = apply({"web": Pin("web", "1")})
        assert (pinned.installed, pinned.current, pinned.previous) == (("1",), "1", "3")
        assert pinned.removed == ()
        assert pinned.kept == {"1": "current"}
        unchanged = apply({"web": Pin("web", "1")})
        assert unchanged.current == "1"
        assert unchanged.previous is None
        assert not unchanged.installed
        assert not unchanged.removed
        assert installed_versions(host.web) == ["1", "2", "3"]
        assert apply({}).removed == ("1",)
