"""Consul failing under the master, over plain HTTP and TLS: errors, rate limits, dropped
connections, and an index that goes backwards."""

from __future__ import annotations

import functools
import time
from collections.abc import Iterator

import pytest
from fault_fleet import Figures, FleetFactory
from process_fleet import Proc, ProcessFleet

from daybook.registry.consul import ConsulRegistry
from daybook_testing.consul_server import ConsulPKI, ConsulServer, FaultKind
from daybook_testing.waiting import wait_for

pytestmark = pytest.mark.faults

PREFIX = "daybook/hosts/"
FAILED_READ = "cannot read the mappings from"
RECOVERED_READ = "are readable again after"
LOCK_UNREACHABLE = "cannot reach the leader lock"
# Failed requests to see during each outage before ending it: several retries, one log line.
RETRIES_SEEN = 4


@pytest.fixture(params=["http", "https"])
def consul(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[ConsulServer]:
    tls = None
    if request.param == "https":
        pki: ConsulPKI = request.getfixturevalue("consul_pki")
        tls = pki.server
        # The test's own client and the fleet's processes (which inherit the environment)
        # trust the session CA, and the CA alone makes them use TLS.
        monkeypatch.setenv("CONSUL_CACERT", pki.ca_file)
    # Blocking queries end within about a second, so an index that went backwards (which
    # Consul reports only when a query returns) shows within the test's patience.
    with ConsulServer(max_query_time_s=1.0, default_query_time_s=1.0, tls=tls) as server:
        yield server


def _failed_requests(consul: ConsulServer) -> int:
    return sum(1 for r in consul.request_log if r.status is None or r.status >= 400)


def _logged(process: Proc, line: str, times: int) -> bool:
    return process.log().count(line) == times


def _wait_for_service(fleet: ProcessFleet, service: str) -> None:
    def reported() -> bool:
        report = fleet.last_report("web-1")
        return report is not None and service in report.services and report.ok

    wait_for(reported, f"web-1 reporting {service}")


def start_an_outage(consul: ConsulServer, kind: FaultKind, *, label: str) -> None:
    """Consul starts failing with `kind`, and the master is seen retrying several times."""
    consul.clear_request_log()
    consul.inject_fault(kind, count=100_000)
    wait_for(lambda: _failed_requests(consul) >= RETRIES_SEEN, f"the master retrying ({label})")


def map_a_service_unseen(consul: ConsulServer, fleet: ProcessFleet, services: list[str]) -> None:
    """The last of `services` mapped during the outage, which the master cannot see yet."""
    added = services[-1]
    consul.put(PREFIX + "web-*", ",".join(services))
    report = fleet.last_report("web-1")
    assert report is not None
    assert added not in report.services


def see_web_1_catch_up(
    consul: ConsulServer,
    fleet: ProcessFleet,
    figures: Figures,
    kind: FaultKind,
    services: list[str],
) -> None:
    """Once Consul answers again, the service mapped meanwhile reaches web-1, the rest stay."""
    added = services[-1]
    consul.clear_faults()
    recovered = time.monotonic()
    _wait_for_service(fleet, added)
    figures[f"{kind}_recovery_s"] = time.monotonic() - recovered
    fleet.wait_converged(["web-1"], {s: ["1"] for s in services if s != "web"})


def see_each_outage_logged_once(master: Proc, outage: int) -> None:
    """After `outage` outages: one failure line for each, not one per retry, and each recovery."""
    log = master.log()
    assert log.count(FAILED_READ) == outage, f"one line per outage, not per retry:\n{log}"
    wait_for(functools.partial(_logged, master, RECOVERED_READ, outage), "the recovery logged")


def restart_the_master_while_consul_is_down(
    consul: ConsulServer,
    fleet: ProcessFleet,
    master: Proc,
    figures: Figures,
    services: list[str],
    web_versions: list[str],
) -> Proc:
    """Consul still down when the master restarts. Unable to take the leader lock, it cannot
    know that it leads (another master might), so it stands by and publishes nothing: the
    minions keep the last state. Once Consul answers it ends the session its killed run
    left on the lock, leads, and serves the mappings with what the store holds now."""
    start_an_outage(consul, "no_leader", label="down")
    master.kill()
    restarted = time.monotonic()
    master = fleet.start_master(same_ports=True)
    versions = [*web_versions, str(len(web_versions) + 1)]
    fleet.push("web", versions[-1])
    wait_for(functools.partial(_logged, master, LOCK_UNREACHABLE, 1), "the master standing by")
    assert fleet.installed("web-1", "web") == web_versions, "a standby publishes nothing"
    consul.clear_faults()
    fleet.wait_converged(["web-1"], {"web": versions})
    figures["master_restart_while_down_s"] = time.monotonic() - restarted
    report = fleet.last_report("web-1")
    assert report is not None
    assert sorted(report.services) == sorted(services), "the mappings from before the restart"
    consul.clear_faults()
    wait_for(functools.partial(_logged, master, RECOVERED_READ, 1), "the recovery logged")
    assert master.log().count(FAILED_READ) == 1
    return master


def follow_an_index_that_goes_backwards(
    consul: ConsulServer, fleet: ProcessFleet, figures: Figures, services: list[str]
) -> int:
    """An index that goes backwards: the master starts over; returns the index it had held."""
    # Reaped tombstones lower the prefix's index below the one the master holds, with no
    # error at all.
    consul.clear_request_log()
    consul.put(PREFIX + "old-*", "web")
    consul.delete(PREFIX + "old-*")
    high = consul.kv_index
    wait_for(
        lambda: any(r.query.get("index") == [str(high)] for r in consul.request_log),
        "the master watching from the delete's index",
    )
    consul.clear_request_log()
    consul.reap_tombstones()
    wait_for(
        lambda: any("index" not in r.query for r in consul.request_log if r.method == "GET"),
        "the master starting over from index 0",
    )
    consul.put(PREFIX + "web-*", ",".join([*services, "queue"]))
    assert consul.kv_index > high
    moved = time.monotonic()
    _wait_for_service(fleet, "queue")
    figures["index_backwards_recovery_s"] = time.monotonic() - moved
    return high


def catch_up_with_a_consul_that_lost_its_data(
    consul: ConsulServer, fleet: ProcessFleet, master: Proc, figures: Figures, high: int
) -> None:
    """A restarted Consul that lost its data, repopulated: every index is lower than before."""
    consul.clear_request_log()
    consul.inject_fault("drop", count=100_000)
    consul.restart()
    consul.put(PREFIX + "web-*", "web,api")
    assert consul.kv_index < high
    wait_for(lambda: _failed_requests(consul) >= RETRIES_SEEN, "the master retrying (restart)")
    consul.clear_faults()
    restarted = time.monotonic()

    def dropped_the_rest() -> bool:
        report = fleet.last_report("web-1")
        return report is not None and sorted(report.services) == ["api", "web"]

    wait_for(dropped_the_rest, "the mappings read after the restart")
    figures["restart_recovery_s"] = time.monotonic() - restarted
    assert master.log().count(FAILED_READ) == 2, "this master's two outages, once each"


def test_consul_faults_keep_the_last_mappings_log_once_and_catch_up(
    consul: ConsulServer, make_fleet: FleetFactory, figures: Figures
) -> None:
    fleet = make_fleet(registry=ConsulRegistry(consul.address), splay_s=0.0)
    extra = ("api", "db", "cache", "queue")
    for service in ("web", *extra):
        fleet.push(service, "1")
    fleet.map("web-*", "web")
    master = fleet.start_master()
    fleet.start_minion("web-1")
    fleet.wait_converged(["web-1"], {"web": ["1"]})

    faults: list[FaultKind] = ["no_leader", "rate_limited", "drop"]
    services = ["web"]
    web_versions = ["1"]
    for outage, (kind, added) in enumerate(zip(faults, extra, strict=False), start=1):
        start_an_outage(consul, kind, label=kind)
        # The master keeps serving the last mappings it read: a new version still goes out.
        version = str(outage + 1)
        fleet.push("web", version)
        web_versions.append(version)
        fleet.wait_converged(["web-1"], {"web": web_versions})
        services.append(added)
        map_a_service_unseen(consul, fleet, services)
        see_web_1_catch_up(consul, fleet, figures, kind, services)
        see_each_outage_logged_once(master, outage)

    master = restart_the_master_while_consul_is_down(
        consul, fleet, master, figures, services, web_versions
    )
    high = follow_an_index_that_goes_backwards(consul, fleet, figures, services)
    catch_up_with_a_consul_that_lost_its_data(consul, fleet, master, figures, high)
