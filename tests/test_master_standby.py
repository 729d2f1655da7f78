"""Two real masters in one process on one file registry and store: one leads, the other
stands by. Only the leader publishes (its events carry its term) and runs syncs; the
standby refuses those naming the leader, answers status with both masters, and takes over
when the leader stops. A leader that loses its term answers every waiting operator."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import requests
import zmq
from inprocess_fleet import (
    DEADLINE_S,
    RunningMaster,
    ScriptedMinion,
    live_minions,
    sample,
    scrape_metrics,
    web_fleet_settings,
)

from daybook.config import Settings
from daybook.model.leadership import LEADER, STANDBY, MasterView
from daybook.model.messages import OP_STATUS, OP_SYNC, ControlReply, ControlRequest
from daybook_testing.waiting import wait_for

# How long a standby is watched for events it must not send: several republish intervals.
SILENCE_S = 1.5


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return web_fleet_settings(tmp_path)


@pytest.fixture
def leader(settings: Settings) -> Iterator[RunningMaster]:
    running = RunningMaster(settings)
    yield running
    if running.thread.is_alive():
        running.shutdown()


@pytest.fixture
def standby(settings: Settings, leader: RunningMaster, tmp_path: Path) -> Iterator[RunningMaster]:
    running = RunningMaster(replace(settings, data_dir=tmp_path / "second", hostname="second"))
    yield running
    if running.thread.is_alive():
        running.shutdown()


@pytest.fixture
def close_later() -> Iterator[list[ScriptedMinion]]:
    """Minions the test made, closed at its end whatever happened."""
    made: list[ScriptedMinion] = []
    yield made
    for minion in made:
        minion.close()


def address(master: RunningMaster) -> str:
    return f"{master.settings.hostname}:{master.port('publish')}"


def masters(master: RunningMaster) -> tuple[MasterView, ...]:
    with master.client() as client:
        return client.fleet_status().masters


def ask_sync(master: RunningMaster, wait_s: float = 0.0) -> ControlReply:
    request = ControlRequest(os.urandom(16).hex(), OP_SYNC, target="web-*", wait_s=wait_s)
    with master.client() as client:
        return client.request(request)


def says_it_leads(master: RunningMaster) -> bool | None:
    """What the master's answer to `status` says of itself, however it was reached."""
    with master.client() as client:
        return client.request(ControlRequest(os.urandom(16).hex(), OP_STATUS)).leading


def fleet_document(master: RunningMaster) -> dict[str, object]:
    with requests.Session() as session:
        session.trust_env = False
        response = session.get(master.endpoints["http"] + "/api/v1/fleet", timeout=5.0)
    response.raise_for_status()
    document: dict[str, object] = response.json()
    return document


def test_one_master_leads_and_the_other_stands_by(
    context: zmq.Context[zmq.Socket[bytes]],
    leader: RunningMaster,
    standby: RunningMaster,
    close_later: list[ScriptedMinion],
) -> None:
    (view,) = masters(leader)
    assert (view.address, view.role) == (address(leader), LEADER)
    assert view.term is not None
    assert view.term >= 1
    wait_for(lambda: len(masters(standby)) == 2, "the standby to see the leader")
    own, theirs = masters(standby)
    assert (own.address, own.role, own.term) == (address(standby), STANDBY, view.term)
    assert (theirs.address, theirs.role, theirs.term) == (address(leader), LEADER, view.term)
    # Each says so in every reply, though asked on its local socket, not at the address it
    # holds the term at: `daybook status` takes each master's role from this.
    assert (says_it_leads(leader), says_it_leads(standby)) == (True, False)
    # The leader's events carry its term.
    (web1,) = live_minions(context, leader, "web-1")
    close_later.append(web1)
    assert web1.next_event().term == view.term
    # The HTTP API and the metrics say who is what.
    document = fleet_document(standby)
    assert document["role"] == STANDBY
    assert document["leader"] == {
        "address": address(leader),
        "term": view.term,
        "since": fleet_document(leader)["masters"][0]["since"],  # type: ignore[index]
    }
    assert fleet_document(leader)["role"] == LEADER
    assert sample(scrape_metrics(leader), "daybook_leader") == 1
    assert sample(scrape_metrics(standby), "daybook_leader") == 0


def test_a_standby_refuses_syncs_naming_the_leader_and_publishes_nothing(
    context: zmq.Context[zmq.Socket[bytes]],
    leader: RunningMaster,
    standby: RunningMaster,
    close_later: list[ScriptedMinion],
) -> None:
    wait_for(lambda: len(masters(standby)) == 2, "the standby to see the leader")
    reply = ask_sync(standby)
    assert reply.standby
    assert reply.leader is not None
    assert reply.leader.holder == address(leader)
    assert reply.error == (
        f"this master is a standby; the leader is {address(leader)} (term {reply.leader.number})"
    )
    # A minion of the standby's, heartbeating as one behind, still gets nothing from it...
    minion = ScriptedMinion(context, standby, "web-2")
    close_later.append(minion)
    minion.heartbeat()
    assert not minion.sub.poll(int(SILENCE_S * 1000))
    # ...yet the standby counts its heartbeats, so a new leader knows the fleet at once.
    with standby.client() as client:
        wait_for(lambda: "web-2" in client.fleet_status().hosts, "the standby to see web-2")
    # The leader answers the same request, and names itself.
    answer = ask_sync(leader)
    assert answer.error is None
    assert answer.leader is not None
    assert answer.leader.holder == address(leader)
    assert not answer.standby


def test_the_standby_takes_over_when_the_leader_stops(
    context: zmq.Context[zmq.Socket[bytes]],
    leader: RunningMaster,
    standby: RunningMaster,
    close_later: list[ScriptedMinion],
) -> None:
    wait_for(lambda: len(masters(standby)) == 2, "the standby to see the leader")
    (old,) = masters(leader)
    assert old.term is not None
    minion = ScriptedMinion(context, standby, "web-3")
    close_later.append(minion)
    leader.shutdown()
    wait_for(lambda: masters(standby)[0].role == LEADER, "the standby to lead")
    (new,) = masters(standby)
    assert new.term is not None
    assert new.term > old.term
    # It publishes at once, under its own term, and runs syncs.
    minion.heartbeat()
    assert minion.next_event().term == new.term
    reply = ask_sync(standby)
    assert reply.error is None
    assert reply.sync is not None
    samples = scrape_metrics(standby)
    assert sample(samples, "daybook_leader") == 1
    assert sample(samples, "daybook_leadership_changes_total") == 1


def test_a_leader_that_loses_its_term_answers_every_waiting_operator(
    context: zmq.Context[zmq.Socket[bytes]],
    leader: RunningMaster,
    tmp_path: Path,
    close_later: list[ScriptedMinion],
) -> None:
    (web1,) = live_minions(context, leader, "web-1")  # it will never report
    close_later.append(web1)
    (view,) = masters(leader)
    replies: list[ControlReply] = []
    waiting = threading.Thread(target=lambda: replies.append(ask_sync(leader, wait_s=60.0)))
    waiting.start()
    wait_for(lambda: web1.next_event().target == "web-*", "the operator's sync published")
    # Another master took a newer term (as after deposing this one): this one's renew fails.
    state = tmp_path / "mappings.json.leader.json"
    document = json.loads(state.read_text())
    state.write_text(json.dumps({**document, "term": document["term"] + 1, "holder": "x:1"}))
    waiting.join(DEADLINE_S)
    (reply,) = replies
    assert reply.error is not None
    assert reply.error.startswith(f"this master lost the leadership (term {view.term}")
    assert "ask the leader" in reply.error
    assert reply.standby


def test_a_former_leader_back_as_a_standby_publishes_nothing(
    context: zmq.Context[zmq.Socket[bytes]],
    leader: RunningMaster,
    standby: RunningMaster,
    close_later: list[ScriptedMinion],
) -> None:
    # The leader published a state (stored in its database) and stops; the standby leads.
    (web1,) = live_minions(context, leader, "web-1")
    close_later.append(web1)
    leader.shutdown()
    wait_for(lambda: masters(standby)[0].role == LEADER, "the standby to lead")
    # Back with its stored state, the old leader stands by and must not serve it.
    back = RunningMaster(leader.settings)
    try:
        wait_for(lambda: masters(back)[0].role == STANDBY, "the old leader to stand by")
        minion = ScriptedMinion(context, back, "web-1")
        close_later.append(minion)
        minion.heartbeat()  # behind: a leader would catch it up at once
        assert not minion.sub.poll(int(SILENCE_S * 1000))
    finally:
        back.shutdown()
