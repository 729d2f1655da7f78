"""The heartbeat pace on a running master: its events ask a fleet over the heartbeat
budget to slow down, and a fleet that already has the state gets no catch-up for it."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import requests
import zmq
from inprocess_fleet import RunningMaster, ScriptedMinion, live_minions, web_fleet_settings

from daybook.config import Settings
from daybook.model.ids import EMPTY_DIGEST
from daybook_testing.waiting import wait_for

# Less than any catch-up's delay plus the least gap between two republishes, with margin.
NO_CATCH_UP_S = 1.5


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    # Two hosts at a tenth of a heartbeat a second: one every 20 s each.
    return replace(web_fleet_settings(tmp_path), max_heartbeats_per_s=0.1, republish_interval_s=60)


def test_a_fleet_over_the_budget_is_asked_to_heartbeat_less_often(
    context: zmq.Context[zmq.Socket[bytes]], master: RunningMaster
) -> None:
    web1, web2 = live_minions(context, master, "web-1", "web-2")
    with master.client() as client:
        client.run_sync("web-*", wait=False, timeout_s=5.0)
    event = web1.next_event()
    while event.target != "web-*":
        event = web1.next_event()
    assert event.heartbeat_s == 20.0

    def down_after_s() -> float:
        fleet = master.endpoints["http"] + "/api/v1/fleet"
        return float(requests.get(fleet, timeout=5.0).json()["down_after_s"])

    # Shown down after 2 s at the configured 0.2 s; the same 10 heartbeats at the pace.
    wait_for(lambda: down_after_s() == 200.0, "down_after_s grown with the pace")
    for minion in (web1, web2):
        minion.close()


def test_a_minion_of_another_epoch_with_the_current_state_gets_no_catch_up(
    context: zmq.Context[zmq.Socket[bytes]], master: RunningMaster
) -> None:
    minion = ScriptedMinion(context, master, "web-1")
    minion.heartbeat(state_digest=EMPTY_DIGEST)  # another state: caught up
    event = minion.next_event()
    # As after a master restart: the former epoch, and the state the master serves.
    minion.heartbeat(epoch=event.epoch + 1000, seq=7, state_digest=event.state_digest)
    assert not minion.sub.poll(int(NO_CATCH_UP_S * 1000))
    minion.heartbeat(epoch=event.epoch, seq=event.seq, state_digest=EMPTY_DIGEST)
    assert minion.next_event().state_digest == event.state_digest
    minion.close()
