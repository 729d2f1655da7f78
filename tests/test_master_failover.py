"""Two real `daybook master` processes on one file registry and store, with their own data
dirs and ports and one `master_key_file`: one leads, the other stands by (each says so over
its own control socket); when the leader stops (SIGTERM) or dies (SIGKILL) the standby
leads within moments, under a newer term. The handover times are printed (`pytest -s`)."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from process_fleet import ProcessFleet, endpoints_once_written

from daybook.errors import DaybookError
from daybook.model.leadership import LEADER, STANDBY, MasterView
from daybook.net.client import ControlClient
from daybook.net.keys import load_or_create_keypair
from daybook.registry.file import FileRegistry
from daybook.store.local import LocalStore
from daybook_testing.processes import Proc
from daybook_testing.waiting import wait_for


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[ProcessFleet]:
    running = ProcessFleet(
        tmp_path,
        store=LocalStore(tmp_path / "store"),
        registry=FileRegistry(tmp_path / "mappings.json"),
    )
    yield running
    failures = running.close()
    assert not failures, "\n".join(failures)


def _masters(data_dir: Path) -> tuple[MasterView, ...] | None:
    """What the master in `data_dir` says of the masters, over its local socket; None while
    it does not answer."""
    endpoints = endpoints_once_written(data_dir)
    if endpoints is None:
        return None
    try:
        with ControlClient(endpoints.endpoints["local"], timeout_s=1.0) as client:
            return client.fleet_status().masters
    except DaybookError:
        return None


def _start_second(fleet: ProcessFleet, key_file: str) -> tuple[Proc, Path]:
    data_dir = fleet.root / "master-2"
    env = fleet.env(
        DAYBOOK_DATA_DIR=str(data_dir),
        DAYBOOK_HOSTNAME="master-2",
        DAYBOOK_PORT="0",
        DAYBOOK_MASTER_KEY_FILE=key_file,
        DAYBOOK_AUTO_ACCEPT="1",
    )
    process = fleet.spawn("master-2", [*fleet.command, "master"], env)
    wait_for(lambda: endpoints_once_written(data_dir), "master two's endpoints")
    return process, data_dir


def _leading(data_dir: Path) -> MasterView | None:
    masters = _masters(data_dir)
    return masters[0] if masters and masters[0].role == LEADER else None


@pytest.mark.e2e
@pytest.mark.parametrize(("sig", "within_s"), [(signal.SIGTERM, 1.0), (signal.SIGKILL, 2.0)])
def test_the_standby_takes_over_when_the_leader_goes(
    fleet: ProcessFleet, tmp_path: Path, sig: signal.Signals, within_s: float
) -> None:
    load_or_create_keypair(tmp_path / "fleet-key", "master")
    key_file = str(tmp_path / "fleet-key" / "master.key_secret")
    leader = fleet.start_master(DAYBOOK_MASTER_KEY_FILE=key_file)
    first = wait_for(lambda: _leading(fleet.master_dir), "master one to lead")
    _, second_dir = _start_second(fleet, key_file)
    seen = wait_for(lambda: _masters(second_dir), "master two to answer")
    assert seen[0].role == STANDBY
    assert seen[0].term == first.term
    assert [(view.address, view.role) for view in seen[1:]] == [(first.address, LEADER)]
    signalled = time.monotonic()
    leader.signal(sig)
    took = wait_for(lambda: _leading(second_dir), "master two to lead")
    handover_s = time.monotonic() - signalled
    print(f"\nhandover after {sig.name}: {handover_s:.3f} s (goal {within_s:g} s)")
    assert took.term is not None
    assert first.term is not None
    assert took.term > first.term
    assert leader.wait() is not None
    if sig == signal.SIGTERM:
        assert "released the leader lease" in leader.log()
