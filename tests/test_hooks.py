"""Local hooks: run after `current` moved, with their environment and cwd, their exit status
and output tail reported, a time limit, a revert when asked, and unsafe files refused."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from archives import make_asset

from daybook.install.hooks import OUTPUT_TAIL_CHARS, HookRun, HookRunner
from daybook.install.installer import Installer
from daybook.install.releases import HOOK_FAILED_PREFIX, ReleaseKeeper
from daybook.model.names import AssetRef
from daybook.model.releases import ReleasePolicy
from daybook.model.results import ServiceResult
from daybook.store.local import LocalStore
from daybook_testing.waiting import wait_for


def write_hook(hooks_dir: Path, service: str, script: str, mode: int = 0o755) -> Path:
    hooks_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(hooks_dir, 0o755)  # noqa: S103 - a hooks dir as an operator makes it
    path = hooks_dir / service
    path.write_text("#!/bin/sh\n" + script)
    os.chmod(path, mode)
    return path


def a_run(tmp_path: Path, version: str = "2", previous: str | None = "1") -> HookRun:
    service_dir = tmp_path / "install" / "web"
    (service_dir / version).mkdir(parents=True, exist_ok=True)
    return HookRun("web", version, previous, service_dir / version, service_dir / "current")


def test_env_cwd_exit_status_and_output(tmp_path: Path) -> None:
    write_hook(
        tmp_path / "hooks",
        "web",
        'echo "svc=$DAYBOOK_SERVICE v=$DAYBOOK_VERSION prev=[$DAYBOOK_PREVIOUS_VERSION]"\n'
        'echo "path=$DAYBOOK_INSTALL_PATH link=$DAYBOOK_CURRENT cwd=$(pwd)"\n'
        "read line && echo stdin-not-empty\n"
        "echo oops >&2\nexit 3\n",
    )
    run = a_run(tmp_path)
    result = HookRunner(tmp_path / "hooks", timeout_s=10).run(run)
    assert result is not None
    assert (result.ok, result.exit) == (False, 3)
    lines = result.output.splitlines()
    assert lines[0] == "svc=web v=2 prev=[1]"
    assert lines[1] == f"path={run.install_path} link={run.current_link} cwd={run.install_path}"
    assert lines[2] == "oops"  # stdin is /dev/null: `read` got nothing

    first = HookRunner(tmp_path / "hooks", timeout_s=10).run(a_run(tmp_path, "1", None))
    assert first is not None
    assert first.output.startswith("svc=web v=1 prev=[]\n")


def test_success_and_the_tail_of_long_output(tmp_path: Path) -> None:
    write_hook(tmp_path / "hooks", "web", "seq 1 20000\n")
    result = HookRunner(tmp_path / "hooks", timeout_s=10).run(a_run(tmp_path))
    assert result is not None
    assert (result.ok, result.exit) == (True, 0)
    assert len(result.output) <= OUTPUT_TAIL_CHARS
    assert result.output.endswith("19999\n20000\n")
    assert result.output.startswith("...")


def test_a_hook_past_its_time_limit_is_killed_with_what_it_started(tmp_path: Path) -> None:
    pid_file = tmp_path / "background.pid"
    write_hook(
        tmp_path / "hooks",
        "web",
        f"echo started\nsleep 600 &\necho $! > {pid_file}\nsleep 600\n",
    )
    result = HookRunner(tmp_path / "hooks", timeout_s=0.5).run(a_run(tmp_path))
    assert result is not None
    assert (result.ok, result.exit) == (False, None)
    assert result.output.startswith("started\n")
    assert "killed after 0.5 s" in result.output
    # The whole process group went, the hook's background child too.
    background = int(pid_file.read_text())
    wait_for(lambda: not alive(background), "the hook's background child to be killed")


def alive(pid: int) -> bool:
    """Running: neither gone nor a zombie waiting for its (new) parent to reap it."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in status


def test_no_hook_no_result(tmp_path: Path) -> None:
    runner = HookRunner(tmp_path / "hooks", timeout_s=10)
    assert runner.run(a_run(tmp_path)) is None
    write_hook(tmp_path / "hooks", "web", "exit 0\n", mode=0o644)  # not executable
    assert runner.run(a_run(tmp_path)) is None


@pytest.mark.parametrize("mode", [0o775, 0o757])
def test_a_hook_others_may_change_is_refused(tmp_path: Path, mode: int) -> None:
    marker = tmp_path / "ran"
    path = write_hook(tmp_path / "hooks", "web", f"touch {marker}\n", mode=mode)
    result = HookRunner(tmp_path / "hooks", timeout_s=10).run(a_run(tmp_path))
    assert result is not None
    assert not result.ok
    assert result.exit is None
    assert f"refused to run {path}" in result.output
    assert "writable" in result.output
    assert not marker.exists()


def test_a_hooks_dir_others_may_change_is_refused(tmp_path: Path) -> None:
    write_hook(tmp_path / "hooks", "web", "exit 0\n")
    os.chmod(tmp_path / "hooks", 0o777)  # noqa: S103 - the loose mode under test
    result = HookRunner(tmp_path / "hooks", timeout_s=10).run(a_run(tmp_path))
    assert result is not None
    assert not result.ok
    assert "writable" in result.output


def test_a_hook_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("only root can give a file away")
    path = write_hook(tmp_path / "hooks", "web", "exit 0\n")
    os.chown(path, 4321, 4321)
    result = HookRunner(tmp_path / "hooks", timeout_s=10).run(a_run(tmp_path))
    assert result is not None
    assert not result.ok
    assert "uid 4321" in result.output


# -- hooks in the lifecycle: after `current` moved, and the revert ---------------------------


class Host:
    def __init__(self, tmp_path: Path, *, revert: bool) -> None:
        self.store = LocalStore(tmp_path / "store")
        self.build = tmp_path / "build"
        self.build.mkdir()
        self.hooks = tmp_path / "hooks"
        self.installer = Installer(self.store, tmp_path / "install")
        self.web = tmp_path / "install" / "web"
        self.keeper = ReleaseKeeper(
            tmp_path / "install",
            lambda _s: ReleasePolicy(activate=True),
            HookRunner(self.hooks, timeout_s=10),
            revert_on_hook_failure=revert,
        )

    def push(self, version: str) -> None:
        path = make_asset(self.build, "web", version)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        self.store.upload(path, AssetRef("web", version), sha256=digest)

    def pull(self) -> ServiceResult:
        outcome = self.installer.sync(["web"], self.keeper.selections(["web"], {}))
        return self.keeper.settle_all(self.installer, outcome, {}).results["web"]


# Fails for version 2 only; logs every run.
FLAKY = (
    'echo "$DAYBOOK_VERSION from $DAYBOOK_PREVIOUS_VERSION" >> {log}\n[ "$DAYBOOK_VERSION" != 2 ]\n'
)


def test_the_hook_runs_only_when_current_moves(tmp_path: Path) -> None:
    host = Host(tmp_path, revert=False)
    log = tmp_path / "log"
    write_hook(host.hooks, "web", FLAKY.format(log=log))
    host.push("1")
    first = host.pull()
    assert first.hook is not None
    assert first.hook.ok
    assert first.ok
    assert host.pull().hook is None  # nothing moved: no run
    assert log.read_text() == "1 from \n"


def pull_a_failing_second_version(
    tmp_path: Path, *, revert: bool
) -> tuple[Host, Path, ServiceResult]:
    """Version 1 pulled with the flaky hook (it passes for 1), then version 2 pulled: its hook
    fails. Gives the host, the hook's log and the second pull's result."""
    host = Host(tmp_path, revert=revert)
    log = tmp_path / "log"
    write_hook(host.hooks, "web", FLAKY.format(log=log))
    host.push("1")
    host.pull()
    host.push("2")
    result = host.pull()
    assert not result.ok
    assert result.hook is not None
    assert (result.hook.ok, result.hook.exit) == (False, 1)
    return host, log, result


def test_a_failing_hook_fails_the_service_and_current_stays(tmp_path: Path) -> None:
    host, log, result = pull_a_failing_second_version(tmp_path, revert=False)
    assert (result.current, result.previous) == ("2", "1")
    assert os.readlink(host.web / "current") == "2"
    assert log.read_text() == "1 from \n2 from 1\n"
    # Every later run says so too (not only the one that moved the link), without running
    # the hook again, until the operator clears the mark.
    later = host.pull()
    assert not later.ok
    assert later.hook is not None
    assert later.hook.exit == 1
    assert later.current == "2"
    assert log.read_text() == "1 from \n2 from 1\n"
    (host.web / f"{HOOK_FAILED_PREFIX}2").unlink()
    assert host.pull().ok


def test_a_failing_hook_with_revert_moves_current_back_and_runs_again(tmp_path: Path) -> None:
    host, log, result = pull_a_failing_second_version(tmp_path, revert=True)
    assert result.hook is not None  # checked there; said again for the type checker
    assert (result.current, result.previous) == ("1", None)
    assert "current moved back to 1" in result.hook.output
    assert "ran again for it: exit 0" in result.hook.output
    assert os.readlink(host.web / "current") == "1"
    assert log.read_text() == "1 from \n2 from 1\n1 from 2\n"

    # The failed version is marked: the next run does not try it again, and says it failed.
    again = host.pull()
    assert not again.ok
    assert again.hook is not None
    assert "the service stays failed" in again.hook.output
    assert again.current == "1"
    assert again.previous is None
    assert log.read_text() == "1 from \n2 from 1\n1 from 2\n"
    assert (host.web / f"{HOOK_FAILED_PREFIX}2").exists()
    # ...but a newer version is tried.
    host.push("3")
    newer = host.pull()
    assert newer.ok
    assert (newer.current, newer.previous) == ("3", "1")
