"""The heartbeat pace on a running master: its events ask a fleet over the heartbeat
budget to slow down."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import requests
import zmq
from inprocess_fleet import RunningMaster, live_minions, web_fleet_settings

from daybook.config import Settings
from daybook_testing.waiting import wait_for


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
