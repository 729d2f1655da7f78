"""Minions in their own network namespaces, with their own host names, cut off and
reconnected."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fault_fleet import Figures, FleetFactory, many_files
from netns import NetworkLab, lab_unavailable
from process_fleet import ProcessFleet

from daybook_testing.waiting import wait_for

pytestmark = pytest.mark.faults

HOSTS = ("web-ns1", "web-ns2")


@pytest.fixture
def lab() -> Iterator[NetworkLab]:
    reason = lab_unavailable()
    if reason is not None:
        pytest.skip(reason)
    made = NetworkLab()
    try:
        yield made
    finally:
        made.close()


def check_each_minion_goes_by_its_namespace(lab: NetworkLab, fleet: ProcessFleet) -> None:
    """Each minion is known by its namespace's own host name, in the namespace and the fleet."""
    hostname = lab.run(
        "web-ns1", [sys.executable, "-c", "import socket; print(socket.gethostname())"]
    )
    assert hostname.stdout.strip() == "web-ns1", hostname.stderr
    assert set(fleet.status().hosts) == set(HOSTS)


def cut_web_ns2_while_it_installs(lab: NetworkLab, fleet: ProcessFleet, figures: Figures) -> str:
    """Cut off mid-install: shown down, yet expected in web 2's sync; returns that sync."""
    # Cut while it installs: its report leaves into a link that is already dead.
    fleet.push("web", "2", many_files(3000, 1024))

    def extracting() -> Path | None:
        return next((p for p in fleet.partials("web-ns2", "web") if (p / "d002").exists()), None)

    wait_for(extracting, "web-ns2 installing web 2", timeout_s=20)
    lab.cut("web-ns2")
    cut_at = time.monotonic()
    fleet.wait_down("web-ns2")
    figures["shown_down_after_s"] = time.monotonic() - cut_at
    fleet.wait_converged(["web-ns1"], {"web": ["1", "2"]})
    entry = fleet.host("web-ns1")
    assert entry is not None
    assert entry.last_report is not None
    sync_of_2 = entry.last_report.sync_id
    assert "web-ns2" in fleet.client.sync_result(sync_of_2).expected
    wait_for(lambda: fleet.installed("web-ns2", "web") == ["1", "2"], "web-ns2 to finish web 2")
    return sync_of_2


def restore_web_ns2_and_see_its_late_report(
    lab: NetworkLab, fleet: ProcessFleet, figures: Figures, sync_of_2: str
) -> None:
    """Reconnected, web-ns2 converges and reports on the sync it finished while cut off."""
    lab.restore("web-ns2")
    restored = time.monotonic()
    fleet.wait_converged(HOSTS, {"web": ["1", "2"]})
    wait_for(
        lambda: "web-ns2" in fleet.client.sync_result(sync_of_2).results,
        "web-ns2's report on the sync it finished while cut off",
    )
    figures["recovery_s"] = time.monotonic() - restored


def reboot_the_master_while_web_ns2_is_cut_off(lab: NetworkLab, fleet: ProcessFleet) -> None:
    """Cut off while the master's host reboots: web-ns1 still gets web 3 meanwhile."""
    # The master's host goes down and comes back, forgetting every connection (as after a
    # reboot): nothing ever tells the minion its links are dead.
    lab.cut("web-ns2")
    fleet.wait_down("web-ns2")
    assert fleet.master is not None
    fleet.master.kill()
    lab.forget_connections("web-ns2")
    fleet.start_master(same_ports=True)
    fleet.push("web", "3")
    fleet.wait_converged(["web-ns1"], {"web": ["1", "2", "3"]})


def test_a_minion_cut_off_is_shown_down_then_converges_by_itself(
    lab: NetworkLab, make_fleet: FleetFactory, figures: Figures
) -> None:
    # The fleet is created after the lab, so its processes stop before the links go.
    fleet = make_fleet(bind=lab.gateway, splay_s=0.0)
    fleet.push("web", "1")
    fleet.map("web-*", "web")
    fleet.start_master()
    for host in HOSTS:
        # No DAYBOOK_HOSTNAME: each minion goes by its namespace's own host name.
        fleet.start_minion(host, wrap=lab.add_host(host), set_hostname=False)
    fleet.wait_converged(HOSTS, {"web": ["1"]})
    check_each_minion_goes_by_its_namespace(lab, fleet)

    sync_of_2 = cut_web_ns2_while_it_installs(lab, fleet, figures)
    restore_web_ns2_and_see_its_late_report(lab, fleet, figures, sync_of_2)

    reboot_the_master_while_web_ns2_is_cut_off(lab, fleet)
    lab.restore("web-ns2")
    restored = time.monotonic()
    fleet.wait_converged(HOSTS, {"web": ["1", "2", "3"]})
    figures["recovery_after_master_reboot_s"] = time.monotonic() - restored
