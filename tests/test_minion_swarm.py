"""The swarm (many real minions in one process) starts against a real master, and stops
through the same shutdown sequence as a minion process."""

from __future__ import annotations

import hashlib
import random
import threading
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import zmq
from archives import make_asset
from inprocess_fleet import DEADLINE_S, RunningMaster, fleet_settings

from daybook.model.names import AssetRef
from daybook.registry.base import open_registry
from daybook.stopping import StopFlag
from daybook.store.local import LocalStore
from daybook_testing.swarm import run_swarm
from daybook_testing.waiting import wait_for
from minion.minion import Minion
from minion.process import LINK_TIMEOUT_INTERVALS, RECONNECT_CAP_RANGE_MS, link_keepalive


def test_a_swarm_syncs_and_stops_cleanly(tmp_path: Path) -> None:
    path = make_asset(tmp_path, "web", "1")
    LocalStore(tmp_path / "store").upload(
        path, AssetRef("web", "1"), sha256=hashlib.sha256(path.read_bytes()).hexdigest()
    )
    open_registry(f"file://{tmp_path / 'mappings.json'}").update("swarm-*", lambda _: ("web",))
    master = RunningMaster(fleet_settings(tmp_path))
    stop = StopFlag()
    started: list[Sequence[Minion]] = []
    outcome: list[int] = []
    settings = replace(
        master.settings,
        data_dir=tmp_path / "swarm-root",
        install_dir=tmp_path / "unused",
        port=master.port("publish"),
        results_port=master.port("results"),
        control_port=master.port("control"),
        key_port=master.port("key"),
    )
    swarm = threading.Thread(
        target=lambda: outcome.append(run_swarm(settings, 3, stop=stop, ready=started.append))
    )
    swarm.start()
    try:
        with master.client() as client:

            def synced() -> bool:
                hosts = client.fleet_status().hosts
                return len(hosts) == 3 and all(
                    h.up and h.last_report is not None and h.last_report.ok for h in hosts.values()
                )

            wait_for(synced, "three swarm minions up and synced")
        (minions,) = started
        assert [minion.host for minion in minions] == ["swarm-0000", "swarm-0001", "swarm-0002"]
        assert all(
            (settings.data_dir / "swarm" / m.host / "install" / "web").is_dir() for m in minions
        )
        # Each socket retries on a schedule of its own, so a fleet that lost its master
        # together does not hammer the restarted one in step.
        sockets = [s for m in minions for s in (m.socket, m.reporter.socket)]
        caps = [s.getsockopt(zmq.RECONNECT_IVL_MAX) for s in sockets]
        assert all(RECONNECT_CAP_RANGE_MS[0] <= cap <= RECONNECT_CAP_RANGE_MS[1] for cap in caps)
        assert len(set(caps)) > 1
        # Dead links are the kernel's to find (keep-alive probes, a TCP user timeout), not
        # ZMTP pings the master would have to decrypt and answer.
        assert all(s.getsockopt(zmq.HEARTBEAT_IVL) == 0 for s in sockets)
        assert all(s.getsockopt(zmq.TCP_KEEPALIVE) == 1 for s in sockets)
        assert all(s.getsockopt(zmq.TCP_MAXRT) > 0 for s in sockets)
        # Each link's idle time is drawn on its own (the test below shows the spread). With
        # this fleet's 0.2 s heartbeat there are two whole seconds to draw from, so six
        # links all drew alike once in 32 runs: what holds every time is the range.
        assert {s.getsockopt(zmq.TCP_KEEPALIVE_IDLE) for s in sockets} <= {1, 2}
    finally:
        stop.set()
        swarm.join(DEADLINE_S)
        master.shutdown()
    assert not swarm.is_alive()
    assert outcome == [0]
    assert all(minion.socket.closed for minion in minions)


def test_links_have_idle_times_of_their_own_and_drop_within_three_intervals() -> None:
    # One broadcast leaves every event link idle at once: with one idle time for all, the
    # fleet's probes reached the master in a single burst each interval, and in the swarm
    # bench a tenth of them were dropped on the way.
    rng = random.Random(7)
    keepalives = [link_keepalive(5.0, rng) for _ in range(1000)]
    assert {k.idle_s for k in keepalives} == set(range(5, 11))
    for keepalive in keepalives:
        # Unanswered probes go a second apart, off the beat of the others' idle times.
        assert keepalive.probe_s == 1
        assert keepalive.probes >= 5
        assert keepalive.timeout_ms == 5 * LINK_TIMEOUT_INTERVALS * 1000
    # The kernel counts whole seconds, at least one.
    short = link_keepalive(0.2, rng)
    assert short.idle_s in (1, 2)
    assert short.probes >= 1
    assert short.timeout_ms == LINK_TIMEOUT_INTERVALS * 1000
