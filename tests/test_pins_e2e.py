"""End to end: `daybook pin`, `rollback` and `unpin` against a real master and two real
minions; each pin reaches both minions in the desired state they sync to."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from process_fleet import ProcessFleet

from daybook import wire
from daybook.model.pins import Pin
from daybook.model.state import EncodedState
from daybook.net.endpoints import read_endpoints
from daybook.registry.file import FileRegistry
from daybook.store.local import LocalStore
from daybook_testing.waiting import wait_for

pytestmark = pytest.mark.e2e

HOSTS = ("web-1", "web-2")


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[ProcessFleet]:
    running = ProcessFleet(
        tmp_path,
        store=LocalStore(tmp_path / "store"),
        registry=FileRegistry(tmp_path / "mappings.json"),
        splay_s=0.1,
    )
    try:
        yield running
    finally:
        failures = running.close()
        assert not failures, "\n".join(failures)


def served_state(fleet: ProcessFleet) -> tuple[str, dict[str, Pin]]:
    """The digest of the desired state the master serves now, and the pins in it."""
    with fleet.database() as db:
        rows = dict(db.execute("SELECT key, value FROM meta WHERE key LIKE 'state%'").fetchall())
    if "state" not in rows:
        return "", {}
    state = EncodedState(bytes(rows["state"]), bytes(rows["state_digest"]).decode())
    return state.digest, dict(wire.decode_state(state).pins)


def wait_until_every_minion_runs(fleet: ProcessFleet, pins: dict[str, Pin]) -> None:
    """The master serves a state with `pins`, and both minions reported syncing to it."""
    digest = wait_for(
        lambda: (served := served_state(fleet))[1] == pins and served[0],
        f"the master serving pins {pins}",
    )
    for host in HOSTS:
        wait_for(
            lambda host=host: (r := fleet.last_report(host)) and r.state_digest == digest,
            f"{host} syncing to the state with pins {pins}",
        )


def pinned_in_api(fleet: ProcessFleet) -> object:
    http_port = read_endpoints(fleet.master_dir).ports["http"]
    with requests.Session() as session:
        session.trust_env = False
        response = session.get(f"http://127.0.0.1:{http_port}/api/v1/services", timeout=5.0)
    response.raise_for_status()
    return response.json()["services"].get("web", {}).get("pinned", "absent")


def test_pin_rollback_and_unpin_reach_every_minion(fleet: ProcessFleet) -> None:
    for version in ("1.0", "1.1", "1.2"):
        fleet.push("web", version)
    fleet.map("web-*", "web")
    fleet.start_master()
    for host in HOSTS:
        fleet.start_minion(host)
    fleet.wait_ready(*HOSTS)

    pinned = fleet.cli("pin", "web", "1.1", "--json")
    assert pinned.returncode == 0, pinned.stderr
    assert json.loads(pinned.stdout) == {"service": "web", "pinned": "1.1"}
    wait_until_every_minion_runs(fleet, {"web": Pin("web", "1.1")})
    wait_for(lambda: pinned_in_api(fleet) == "1.1", "the pin in /api/v1/services")

    rolled = fleet.cli("rollback", "web")
    assert rolled.returncode == 0, rolled.stderr
    assert rolled.stdout == "web: rolled back 1.1 -> 1.0\n"
    wait_until_every_minion_runs(fleet, {"web": Pin("web", "1.0", previous="1.1")})
    wait_for(lambda: pinned_in_api(fleet) == "1.0", "the rollback in /api/v1/services")

    unpinned = fleet.cli("unpin", "web", "--json")
    assert json.loads(unpinned.stdout) == {"service": "web", "pinned": None}
    wait_until_every_minion_runs(fleet, {})
    wait_for(lambda: pinned_in_api(fleet) is None, "the unpin in /api/v1/services")
