"""The master carries pins: a pin change alone is a new desired state, sent to every host,
and the HTTP API shows each service's pin."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import requests
import zmq
from archives import make_asset
from inprocess_fleet import RunningMaster, ScriptedMinion, fleet_settings, live_minions
from test_master_watchers import run_watcher

from daybook import wire
from daybook.config import Settings
from daybook.model.mappings import MappingTable
from daybook.model.names import AssetRef
from daybook.model.pins import Pin
from daybook.model.state import DesiredState, EncodedState
from daybook.registry.base import Snapshot, open_registry
from daybook.store.local import LocalStore
from daybook_testing.waiting import wait_for
from master.changes import MappingsChanged


def test_a_pin_change_alone_is_posted(monkeypatch: pytest.MonkeyPatch) -> None:
    web: MappingTable = {"web-*": ("web",)}
    pins = {"web": Pin("web", "1")}
    posted, _, _ = run_watcher(
        [Snapshot(web, 10), Snapshot(web, 11, pins), Snapshot(web, 12, pins), Snapshot(web, 13)],
        monkeypatch,
    )
    assert posted == [MappingsChanged(web), MappingsChanged(web, pins), MappingsChanged(web)]


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    store = LocalStore(tmp_path / "store")
    for version in ("1", "2"):
        path = make_asset(tmp_path, "web", version)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        store.upload(path, AssetRef("web", version), sha256=digest)
    open_registry(f"file://{tmp_path / 'mappings.json'}").update("web-*", lambda _: ("web",))
    return fleet_settings(tmp_path)


def state_of(minion: ScriptedMinion, wanted: dict[str, Pin]) -> DesiredState:
    """The first desired state the minion receives that carries exactly `wanted` pins."""
    seen: list[DesiredState] = []

    def received() -> bool:
        event = minion.next_event()
        seen.append(wire.decode_state(EncodedState(event.state, event.state_digest)))
        return dict(seen[-1].pins) == wanted

    wait_for(received, f"a desired state with pins {wanted}")
    return seen[-1]


def pinned(master: RunningMaster) -> object:
    with requests.Session() as session:
        session.trust_env = False
        response = session.get(master.endpoints["http"] + "/api/v1/services", timeout=5.0)
    response.raise_for_status()
    # "absent" until the watchers have first read the store and the registry.
    return response.json()["services"].get("web", {}).get("pinned", "absent")


def test_a_pin_reaches_every_host_and_the_api(
    context: zmq.Context[zmq.Socket[bytes]], master: RunningMaster, settings: Settings
) -> None:
    minions = live_minions(context, master, "web-1", "web-2")
    wait_for(lambda: pinned(master) != "absent", "the services in /api/v1/services")
    assert pinned(master) is None
    registry = open_registry(settings.registry)
    registry.update_pin("web", lambda _: Pin("web", "1"))
    for minion in minions:
        state = state_of(minion, {"web": Pin("web", "1")})
        assert state.mappings == {"web-*": ("web",)}
    wait_for(lambda: pinned(master) == "1", "the pin in /api/v1/services")

    registry.update_pin("web", lambda _: None)
    for minion in minions:
        state_of(minion, {})
    wait_for(lambda: pinned(master) is None, "the unpin in /api/v1/services")
    for minion in minions:
        minion.close()
