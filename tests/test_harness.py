"""The shared harness itself: waiting on conditions, and stopping processes."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from daybook_testing.fleet import Fleet
from daybook_testing.processes import Proc, stop_together
from daybook_testing.waiting import wait_for

# A child that says when it is ready, then exits 0 on SIGTERM, or ignores it.
OBEYS = (
    "import signal, sys; signal.signal(signal.SIGTERM, lambda *_: sys.exit(0));"
    " print('ready', flush=True); signal.pause()"
)
IGNORES = (
    "import signal; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True);"
    " signal.pause()"
)


def child(tmp_path: Path, name: str, code: str) -> Proc:
    process = Proc(name, [sys.executable, "-c", code], {}, tmp_path / f"{name}.log")
    wait_for(lambda: "ready" in process.log(), f"{name} to start")
    return process


def test_wait_for_returns_the_first_true_value() -> None:
    answers = iter([None, 0, "", "found"])
    assert wait_for(lambda: next(answers), "an answer") == "found"


@pytest.mark.parametrize("error", [AssertionError, RuntimeError])
def test_wait_for_raises_the_callers_error_naming_what_it_awaited(
    error: type[Exception],
) -> None:
    with pytest.raises(error, match=r"timed out after 0\.05 s waiting for the moon"):
        wait_for(lambda: None, "the moon", 0.05, error=error)


def test_stop_together_reports_only_what_did_not_stop_cleanly(tmp_path: Path) -> None:
    obeys = child(tmp_path, "obeys", OBEYS)
    ignores = child(tmp_path, "ignores", IGNORES)
    failures = stop_together([obeys, ignores], timeout_s=0.5)
    assert not obeys.alive()
    assert not ignores.alive()
    assert len(failures) == 1
    assert failures[0].startswith("ignores exited None:\nready")


def test_a_dead_process_fails_the_fleet_with_its_log(tmp_path: Path) -> None:
    fleet = Fleet(
        tmp_path,
        command=[sys.executable, "-c", "print('no such command'); raise SystemExit(3)", "--"],
        config="",
        store_url=f"file://{tmp_path / 'store'}",
        registry_url=f"file://{tmp_path / 'mappings.json'}",
        error=RuntimeError,
    )
    with pytest.raises(RuntimeError, match="master exited 3:\nno such command"):
        fleet.start_master()
    assert fleet.close() == []
