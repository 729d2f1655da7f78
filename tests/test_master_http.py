"""The master's HTTP API and /metrics, served by the real master (composition root, loop,
database) on 127.0.0.1, with scripted minions speaking the wire protocol."""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
import zmq
from archives import make_asset
from inprocess_fleet import (
    RunningMaster,
    ScriptedMinion,
    fleet_settings,
    live_minions,
    minion_keypair,
)
from prometheus_client.parser import text_string_to_metric_families

from daybook import wire
from daybook.config import Settings
from daybook.model.messages import SyncEvent
from daybook.model.names import AssetRef
from daybook.model.results import Report, ServiceResult
from daybook.net.transport import secure_client
from daybook.registry.base import open_registry
from daybook.store.local import LocalStore
from daybook.views import status_json, sync_json
from daybook_testing.waiting import wait_for


def push_asset(tmp_path: Path, service: str, version: str) -> int:
    """Put SERVICE-VERSION in the test store; return its size in bytes."""
    path = make_asset(tmp_path, service, version)
    LocalStore(tmp_path / "store").upload(
        path, AssetRef(service, version), sha256=hashlib.sha256(path.read_bytes()).hexdigest()
    )
    return path.stat().st_size


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    push_asset(tmp_path, "web", "1")
    open_registry(f"file://{tmp_path / 'mappings.json'}").update("web-*", lambda _: ("web",))
    return fleet_settings(tmp_path)


class Api:
    """A client for one master's HTTP server; ignores proxy settings from the environment."""

    def __init__(self, master: RunningMaster) -> None:
        self.base = master.endpoints["http"]
        self.session = requests.Session()
        self.session.trust_env = False

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return self.session.get(self.base + path, timeout=5.0, **kwargs)

    def json(self, path: str) -> Any:
        response = self.get(path)
        assert response.status_code == 200, response.text
        assert response.headers["Content-Type"] == "application/json"
        return response.json()

    def metrics(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        response = self.get("/metrics")
        assert response.status_code == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        return {
            (sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(response.text)
            for sample in family.samples
        }

    def close(self) -> None:
        self.session.close()


@pytest.fixture
def api(master: RunningMaster) -> Iterator[Api]:
    client = Api(master)
    yield client
    client.close()


def metric(
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def send_report(
    minion: ScriptedMinion,
    event: SyncEvent,
    services: dict[str, ServiceResult],
    installed: dict[str, tuple[str, ...]],
) -> Report:
    now = time.time()
    report = Report(
        report_id=f"{minion.host}-{event.sync_id}",
        host=minion.host,
        sync_id=event.sync_id,
        epoch=event.epoch,
        seq=event.seq,
        state_digest=event.state_digest,
        pattern="web-*",
        services=services,
        installed=installed,
        started_at=now - 0.5,
        finished_at=now,
    )
    minion.push.send_multipart(wire.encode(report))
    return report


def operator_sync(master: RunningMaster) -> str:
    with master.client() as client:
        return client.run_sync(None, wait=False, timeout_s=5.0).sync_id


# -- the server itself ------------------------------------------------------------------------


def test_it_listens_on_loopback_by_default_and_records_its_port(master: RunningMaster) -> None:
    assert Settings.http_bind == "127.0.0.1"
    url = urlsplit(master.endpoints["http"])
    assert url.scheme == "http"
    assert url.hostname == "127.0.0.1"
    document = json.loads((master.settings.data_dir / "master.json").read_text())
    assert document["endpoints"]["http"] == master.endpoints["http"]
    assert document["ports"]["http"] == url.port


def test_the_index_lists_the_versioned_endpoints(api: Api) -> None:
    endpoints = api.json("/api/v1")["endpoints"]
    assert {"/api/v1/fleet", "/api/v1/services", "/api/v1/mappings", "/metrics"} <= set(endpoints)


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"])
@pytest.mark.parametrize("path", ["/api/v1/fleet", "/metrics", "/"])
def test_only_get_and_head_are_allowed(api: Api, method: str, path: str) -> None:
    response = api.session.request(method, api.base + path, data=b"{}", timeout=5.0)
    assert response.status_code == 405
    assert response.headers["Allow"] == "GET, HEAD"
    assert "read-only" in response.json()["error"]


def test_an_unknown_method_is_a_json_error(master: RunningMaster) -> None:
    url = urlsplit(master.endpoints["http"])
    assert url.hostname is not None
    assert url.port is not None
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=5.0)
    try:
        connection.request("BREW", "/api/v1/fleet")
        response = connection.getresponse()
        assert response.status == 501
        assert json.loads(response.read())["status"] == 501
    finally:
        connection.close()


def test_a_client_that_resets_mid_request_costs_one_debug_line(
    master: RunningMaster,
    api: Api,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    url = urlsplit(master.endpoints["http"])
    assert url.hostname is not None
    assert url.port is not None
    caplog.set_level(logging.DEBUG, logger="master.http_server")
    client = socket.create_connection((url.hostname, url.port), timeout=5.0)
    client.sendall(b"GET /api/v1/fle")
    # Linger 0: close sends a reset, as a browser tab or a scraper that gave up does.
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()
    wait_for(lambda: "went away" in caplog.text, "the reset to be noticed", timeout_s=10.0)
    assert "Traceback" not in capfd.readouterr().err
    assert api.get("/api/v1/fleet").status_code == 200


def test_head_answers_headers_without_a_body(api: Api) -> None:
    full = api.get("/static/app.js")
    head = api.session.head(api.base + "/static/app.js", timeout=5.0)
    assert head.status_code == 200
    assert head.content == b""
    assert head.headers["Content-Length"] == str(len(full.content))


@pytest.mark.parametrize(
    ("path", "status", "fragment"),
    [
        ("/nothing-here", 404, "no such resource"),
        ("/api/v2/fleet", 404, "no such resource"),
        ("/api/v1/hosts/web-404", 404, "unknown host 'web-404'"),
        ("/api/v1/hosts/not_a_host", 400, "invalid host name"),
        ("/api/v1/hosts/%2e%2e%2fetc", 400, "invalid host name"),
        ("/api/v1/syncs/" + "f" * 32, 404, "unknown sync id"),
        ("/api/v1/syncs/not!an!id", 400, "invalid sync id"),
        ("/api/v1/syncs?limit=0", 400, "limit must be"),
        ("/api/v1/syncs?limit=5000", 400, "limit must be"),
        ("/api/v1/syncs?limit=ten", 400, "limit must be"),
        ("/static/../pyproject.toml", 404, "no such resource"),
    ],
)
def test_errors_are_json_with_a_status(api: Api, path: str, status: int, fragment: str) -> None:
    response = api.get(path)
    assert response.status_code == status
    assert response.headers["Content-Type"] == "application/json"
    document = response.json()
    assert document["status"] == status
    assert fragment in document["error"]


def test_requests_for_other_host_names_are_refused_on_loopback(api: Api) -> None:
    # A page on another site that rebinds its DNS name to 127.0.0.1 sends its own Host.
    refused = api.get("/api/v1/fleet", headers={"Host": "attacker.example:4508"})
    assert refused.status_code == 403
    assert "loopback" in refused.json()["error"]
    for name in ("localhost:8080", "127.0.0.1", "[::1]:4508", "dash.localhost"):
        assert api.get("/api/v1/fleet", headers={"Host": name}).status_code == 200, name


def test_the_dashboard_is_served_with_a_strict_policy(api: Api) -> None:
    page = api.get("/")
    assert page.status_code == 200
    assert page.headers["Content-Type"] == "text/html; charset=utf-8"
    policy = page.headers["Content-Security-Policy"]
    assert "script-src 'self'" in policy
    assert "'unsafe-inline'" not in policy
    assert 'src="static/app.js"' in page.text
    script = api.get("/static/app.js")
    assert script.headers["Content-Type"] == "text/javascript; charset=utf-8"
    assert "innerHTML" not in script.text
    assert api.get("/static/style.css").status_code == 200
    assert api.get("/index.html").text == page.text


# -- the documents ----------------------------------------------------------------------------


def test_fleet_and_host_documents_follow_the_fleet(
    context: zmq.Context[zmq.Socket[bytes]], master: RunningMaster, api: Api
) -> None:
    assert api.json("/api/v1/fleet")["hosts"] == {}
    web1, web2 = live_minions(context, master, "web-1", "web-2")
    sync_id = operator_sync(master)
    web1.report(web1.event_for(sync_id))
    web2.report(web2.event_for(sync_id), ok=False)

    def reported() -> Any:
        fleet = api.json("/api/v1/fleet")
        hosts = fleet["hosts"]
        done = all((hosts.get(h) or {}).get("last_sync") for h in ("web-1", "web-2"))
        return done and fleet

    fleet = wait_for(reported, "both reports in /api/v1/fleet")
    assert fleet["counts"] == {"hosts": 2, "up": 2, "down": 0, "failing": 1, "never_synced": 0}
    with master.client() as client:
        assert fleet["epoch"] == client.fleet_status().epoch
        status = status_json(client.fleet_status())
    assert fleet["state"]["digest"]
    for host in ("web-1", "web-2"):  # the same shape as `daybook status --json`
        ours, theirs = fleet["hosts"][host], status["hosts"][host]
        assert set(ours) == set(theirs)
        assert ours["last_sync"] == theirs["last_sync"]
        assert ours["installed"] == theirs["installed"] == {"web": ["1"]}
    assert fleet["hosts"]["web-2"]["last_sync"]["services"]["web"]["failed"] == {"1": "broken"}

    host = api.json("/api/v1/hosts/web-1")
    assert host["host"] == "web-1"
    assert host["up"] is True
    assert host["last_sync"]["sync_id"] == sync_id
    assert host["desired"] == {"pattern": "web-*", "services": ["web"]}
    assert host["behind"] == {"web": []}
    assert api.json("/api/v1/hosts/WEB-1")["host"] == "web-1"  # host names ignore case
    for minion in (web1, web2):
        minion.close()


def web_service(api: Api) -> Any:
    """The `web` entry of /api/v1/services; empty until the store has been listed."""
    return api.json("/api/v1/services")["services"].get("web", {})


def test_a_host_goes_down_in_the_api_when_heartbeats_stop(
    context: zmq.Context[zmq.Socket[bytes]], master: RunningMaster, api: Api
) -> None:
    (web1,) = live_minions(context, master, "web-1")
    wait_for(lambda: api.json("/api/v1/fleet")["counts"]["up"] == 1, "web-1 up")
    web1.close()
    # down_after_s is 2 s in these settings; liveness is judged at request time.
    fleet = wait_for(
        lambda: (f := api.json("/api/v1/fleet"))["counts"]["down"] == 1 and f, "web-1 down"
    )
    assert fleet["hosts"]["web-1"]["up"] is False
    assert api.json("/api/v1/hosts/web-1")["up"] is False


def test_syncs_newest_first_with_a_limit_and_one_sync_in_full(
    context: zmq.Context[zmq.Socket[bytes]], master: RunningMaster, api: Api
) -> None:
    web1, web2 = live_minions(context, master, "web-1", "web-2")
    first = operator_sync(master)
    web1.report(web1.event_for(first))
    second = operator_sync(master)
    web1.report(web1.event_for(second), ok=False)
    web2.report(web2.event_for(second))

    def listed() -> Any:
        syncs = api.json("/api/v1/syncs")["syncs"]
        newest = syncs[0] if syncs else None
        return newest and newest["sync_id"] == second and newest["hosts"]["answered"] == 2 and syncs

    syncs = wait_for(listed, "the second sync answered in /api/v1/syncs")
    ids = [sync["sync_id"] for sync in syncs]
    assert ids.index(second) < ids.index(first)
    issued = [sync["issued_at"] for sync in syncs]
    assert issued == sorted(issued, reverse=True)
    assert syncs[0] == {
        **syncs[0],
        "origin": "operator",
        "target": "*",
        "hosts": {"expected": 2, "answered": 2, "failed": 1, "missing": 0},
        "complete": True,
        "ok": False,
    }
    older = next(sync for sync in syncs if sync["sync_id"] == first)
    assert older["hosts"] == {"expected": 2, "answered": 1, "failed": 0, "missing": 1}
    assert older["complete"] is False

    limited = api.json("/api/v1/syncs?limit=1")
    assert limited["limit"] == 1
    assert [sync["sync_id"] for sync in limited["syncs"]] == [second]

    # One sync: as `daybook sync --json` shows it.
    document = api.json(f"/api/v1/syncs/{first}")
    with master.client() as client:
        assert document == sync_json(client.sync_result(first))
    assert document["missing"] == ["web-2"]
    assert document["results"]["web-1"]["ok"] is True
    for minion in (web1, web2):
        minion.close()


def test_services_show_versions_counts_and_laggards(
    context: zmq.Context[zmq.Socket[bytes]], master: RunningMaster, api: Api, tmp_path: Path
) -> None:
    web1, web2 = live_minions(context, master, "web-1", "web-2")
    sync_id = operator_sync(master)
    web1.report(web1.event_for(sync_id))
    web2.report(web2.event_for(sync_id))
    wait_for(lambda: web_service(api).get("installed") == {"1": 2}, "both hosts counted with web 1")
    size = push_asset(tmp_path, "web", "2")
    web = wait_for(lambda: (d := web_service(api)).get("newest") == "2" and d, "web 2")
    assert api.json("/api/v1/services")["ready"] is True
    assert web["versions"] == ["1", "2"]
    assert web["bytes"]["2"] == size
    assert web["mapped_hosts"] == ["web-1", "web-2"]
    assert web["lagging"] == ["web-1", "web-2"]
    assert web["failing"] == []
    assert api.json("/api/v1/hosts/web-1")["behind"] == {"web": ["2"]}

    event = web1.event_for(operator_sync(master))
    send_report(
        web1, event, {"web": ServiceResult(installed=("2",), present=("1",))}, {"web": ("1", "2")}
    )
    web = wait_for(lambda: (d := web_service(api))["lagging"] == ["web-2"] and d, "web-1 caught up")
    assert web["installed"] == {"1": 2, "2": 1}
    for minion in (web1, web2):
        minion.close()


def test_mappings_show_the_table_and_who_each_pattern_wins(
    context: zmq.Context[zmq.Socket[bytes]], master: RunningMaster, api: Api, tmp_path: Path
) -> None:
    registry = open_registry(f"file://{tmp_path / 'mappings.json'}")
    registry.update("web-1", lambda _: ("web", "extra"))
    web1, web2, db1 = live_minions(context, master, "web-1", "web-2", "db-1")
    document = wait_for(
        lambda: (d := api.json("/api/v1/mappings"))["hosts"].get("web-1") and d,
        "the new pattern",
    )
    assert document["ready"] is True
    assert document["mappings"] == {"web-*": ["web"], "web-1": ["web", "extra"]}
    assert document["hosts"] == {"web-*": ["web-2"], "web-1": ["web-1"]}
    assert document["unmatched"] == ["db-1"]
    for minion in (web1, web2, db1):
        minion.close()


def test_readers_on_many_threads_while_the_fleet_reports(
    context: zmq.Context[zmq.Socket[bytes]], master: RunningMaster, api: Api
) -> None:
    minions = live_minions(context, master, "web-1", "web-2", "web-3")
    failures: list[str] = []
    stop = threading.Event()

    def reader() -> None:
        session = requests.Session()
        session.trust_env = False
        paths = ["/api/v1/fleet", "/api/v1/services", "/api/v1/syncs", "/metrics", "/"]
        while not stop.is_set():
            for path in paths:
                response = session.get(api.base + path, timeout=5.0)
                if response.status_code != 200:
                    failures.append(f"{path}: {response.status_code} {response.text[:200]}")
        session.close()

    threads = [threading.Thread(target=reader) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        for _ in range(5):
            sync_id = operator_sync(master)
            for minion in minions:
                minion.report(minion.event_for(sync_id))
        wait_for(
            lambda: api.json("/api/v1/syncs?limit=1")["syncs"][0]["hosts"]["answered"] == 3,
            "the last sync answered",
        )
    finally:
        stop.set()
        for thread in threads:
            thread.join(10.0)
    assert failures == []
    for minion in minions:
        minion.close()


# -- metrics ----------------------------------------------------------------------------------


def sync_with_web_2_failing(
    master: RunningMaster, web1: ScriptedMinion, web2: ScriptedMinion
) -> Report:
    """An operator sync, installed by web-1 and failed by web-2; returns web-1's report."""
    sync_id = operator_sync(master)
    good = send_report(
        web1,
        web1.event_for(sync_id),
        {"web": ServiceResult(installed=("2",), present=("1",))},
        {"web": ("1", "2")},
    )
    send_report(
        web2,
        web2.event_for(sync_id),
        {"web": ServiceResult(present=("1",), failed={"2": "disk full"})},
        {"web": ("1",)},
    )
    with master.client() as client:
        wait_for(lambda: client.sync_result(sync_id).complete, "both reports")
    return good


def see_the_failed_sync_and_its_reports_counted(api: Api, size: int, good: Report) -> None:
    """The sync, both reports, the failure, the bytes pulled and the latency in /metrics."""
    samples = wait_for(
        lambda: (
            (s := api.metrics())
            and metric(s, "daybook_syncs_completed_total", result="failed") == 1
            and s
        ),
        "the completed sync counted",
    )
    assert metric(samples, "daybook_syncs_started_total", origin="operator") == 1
    # The operator's sync counts as failed, never ok. The push may also start automatic
    # syncs, which complete ok at once if no minion was up yet to be waited for.
    automatic = sum(
        metric(samples, "daybook_syncs_started_total", origin=origin)
        for origin in ("auto", "startup")
    )
    assert metric(samples, "daybook_syncs_completed_total", result="ok") <= automatic
    assert metric(samples, "daybook_reports_total", result="ok") == 1
    assert metric(samples, "daybook_reports_total", result="failed") == 1
    assert metric(samples, "daybook_install_failures_total", service="web") == 1
    assert metric(samples, "daybook_pulled_bytes_total", service="web") == size
    assert metric(
        samples, "daybook_host_last_successful_sync_timestamp_seconds", host="web-1"
    ) == pytest.approx(good.finished_at)
    assert (
        "daybook_host_last_successful_sync_timestamp_seconds",
        frozenset({("host", "web-2")}),
    ) not in samples
    assert metric(samples, "daybook_report_latency_seconds_count") == 2
    assert metric(samples, "daybook_report_latency_seconds_bucket", le="+Inf") == 2
    assert 0 < metric(samples, "daybook_report_latency_seconds_sum") < 10
    assert metric(samples, "daybook_heartbeats_total") >= 2
    assert metric(samples, "daybook_published_events_total") >= 1


def see_bad_frames_counted(
    context: zmq.Context[zmq.Socket[bytes]], master: RunningMaster, api: Api
) -> None:
    """Garbage from an accepted key reaches the master, is dropped there, and is counted."""
    hostile = context.socket(zmq.PUSH)
    hostile.setsockopt(zmq.LINGER, 0)
    secure_client(hostile, master.credentials(minion_keypair("web-hostile")))
    hostile.connect(master.endpoints["results"])
    hostile.send_multipart([b"report", b"\xc1"])
    hostile.send_multipart([b"nonsense", b"x"])
    wait_for(
        lambda: metric(api.metrics(), "daybook_invalid_frames_total", socket="results") == 2,
        "the bad frames counted",
    )
    hostile.close()


def test_metrics_move_with_syncs_reports_and_bad_frames(
    context: zmq.Context[zmq.Socket[bytes]], master: RunningMaster, api: Api, tmp_path: Path
) -> None:
    before = api.metrics()
    assert metric(before, "daybook_hosts", state="up") == 0
    assert metric(before, "daybook_syncs_completed_total", result="failed") == 0
    assert ("daybook_syncs_completed_total", frozenset({("result", "failed")})) in before

    size = push_asset(tmp_path, "web", "2")
    web1, web2 = live_minions(context, master, "web-1", "web-2")
    wait_for(lambda: metric(api.metrics(), "daybook_hosts", state="up") == 2, "two hosts up")
    wait_for(lambda: web_service(api).get("newest") == "2", "web 2 listed")
    good = sync_with_web_2_failing(master, web1, web2)
    see_the_failed_sync_and_its_reports_counted(api, size, good)
    see_bad_frames_counted(context, master, api)
    for minion in (web1, web2):
        minion.close()


def test_metrics_speak_openmetrics_when_asked(api: Api) -> None:
    response = api.get(
        "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}
    )
    assert response.headers["Content-Type"].startswith("application/openmetrics-text")
    assert response.text.rstrip().endswith("# EOF")


def test_two_masters_in_one_process_keep_their_own_counts(
    context: zmq.Context[zmq.Socket[bytes]], master: RunningMaster, api: Api, tmp_path: Path
) -> None:
    other_root = tmp_path / "other"
    other_root.mkdir()
    push_asset(other_root, "web", "1")
    other = RunningMaster(fleet_settings(other_root))
    other_api = Api(other)
    try:
        operator_sync(master)
        wait_for(
            lambda: metric(api.metrics(), "daybook_syncs_started_total", origin="operator") == 1,
            "the sync counted",
        )
        assert metric(other_api.metrics(), "daybook_syncs_started_total", origin="operator") == 0
    finally:
        other_api.close()
        other.shutdown()
