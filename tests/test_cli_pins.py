"""`daybook pin`, `unpin`, `rollback` and `assets prune` as users and scripts see them, on
the file registry and the local store: output, JSON, exit codes, one-line errors."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import pytest
import zmq
from archives import make_asset
from cli_runner import Result, Run, cli_runner
from inprocess_fleet import RunningMaster, ScriptedMinion, fleet_settings, live_minions

from daybook import wire
from daybook.cli.main import main
from daybook.model.pins import Pin
from daybook.model.results import Report, ServiceResult
from daybook.registry.base import open_registry
from daybook_testing.waiting import wait_for


@pytest.fixture
def run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Run:
    unset = ("DAYBOOK_CONFIG", "DAYBOOK_MASTER", "DAYBOOK_STORE", "DAYBOOK_REGISTRY")
    # No master here (DAYBOOK_KEY_PORT 0): asking one fails at once rather than after a
    # timeout.
    env = {"DAYBOOK_DATA_DIR": str(tmp_path / "data"), "DAYBOOK_KEY_PORT": "0"}
    return cli_runner(monkeypatch, capsys, unset=unset, env=env)


def push(run: Run, tmp_path: Path, service: str, *versions: str) -> None:
    build = tmp_path / "build"
    build.mkdir(exist_ok=True)
    files = [str(make_asset(build, service, version)) for version in versions]
    assert run("push", *files).code == 0


def assert_one_line_error(result: Result, code: int, *fragments: str) -> None:
    assert result.code == code, result
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    assert lines[0].startswith("daybook: ")
    for fragment in fragments:
        assert fragment in lines[0]


def pins_in(tmp_path: Path) -> dict[str, Pin]:
    registry = open_registry(f"file://{tmp_path / 'data' / 'mappings.json'}")
    return dict(registry.read().pins)


def stored(run: Run, service: str) -> list[str]:
    return [row["version"] for row in run("assets", service, "--json").json()]


# -- pin, unpin --------------------------------------------------------------------------------


def test_pin_and_unpin(run: Run, tmp_path: Path) -> None:
    push(run, tmp_path, "web", "1.0", "1.1")
    result = run("pin", "web", "1.0")
    assert result.code == 0, result
    assert result.out == "web: pinned to 1.0 (was not pinned)\n"
    assert run("pin", "web", "1.1", "--json").json() == {"service": "web", "pinned": "1.1"}
    assert pins_in(tmp_path) == {"web": Pin("web", "1.1", previous="1.0")}
    assert run("pin", "web", "1.1").out == "web: pinned to 1.1 (already)\n"

    assert run("unpin", "web", "--json").json() == {"service": "web", "pinned": None}
    assert pins_in(tmp_path) == {}
    result = run("unpin", "web")
    assert result.code == 0
    assert "web was not pinned" in result.out


def test_pin_refuses_a_version_the_store_does_not_hold(run: Run, tmp_path: Path) -> None:
    push(run, tmp_path, "web", "1.0")
    assert_one_line_error(run("pin", "web", "9.9"), 2, "web 9.9 is not in the store", "1.0")
    assert_one_line_error(run("pin", "db", "1"), 2, "db 1", "no version")
    assert pins_in(tmp_path) == {}


@pytest.mark.parametrize(
    "argv",
    [
        ("pin", "bad-name", "1"),
        ("pin", "web", "../1"),
        ("unpin", "web/x"),
        ("rollback", "web x"),
    ],
)
def test_bad_names_are_bad_input(run: Run, argv: tuple[str, ...]) -> None:
    result = run(*argv)
    assert_one_line_error(result, 2, "invalid")


def test_an_unreachable_registry_is_one_line_and_exit_1(
    run: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    push(run, tmp_path, "web", "1.0", "2.0")
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    monkeypatch.setenv("DAYBOOK_REGISTRY", f"consul://127.0.0.1:{port}/daybook/hosts/")
    for argv in (("pin", "web", "1.0"), ("unpin", "web"), ("rollback", "web")):
        assert_one_line_error(run(*argv), 1, "cannot reach Consul")


# -- rollback ----------------------------------------------------------------------------------


def test_rollback_steps_back_one_version_at_a_time(run: Run, tmp_path: Path) -> None:
    push(run, tmp_path, "web", "1.9", "1.10", "1.0")
    result = run("rollback", "web")
    assert result.code == 0, result
    assert result.out == "web: rolled back 1.10 -> 1.9\n"
    assert pins_in(tmp_path) == {"web": Pin("web", "1.9")}
    document = run("rollback", "web", "--json").json()
    assert document == {"service": "web", "pinned": "1.0", "from": "1.9"}
    assert pins_in(tmp_path) == {"web": Pin("web", "1.0", previous="1.9")}
    assert_one_line_error(run("rollback", "web"), 1, "no version older than 1.0")
    assert pins_in(tmp_path) == {"web": Pin("web", "1.0", previous="1.9")}  # unchanged


def test_rollback_from_a_pin(run: Run, tmp_path: Path) -> None:
    push(run, tmp_path, "web", "1", "2", "3")
    run("pin", "web", "2")
    assert run("rollback", "web").out == "web: rolled back 2 -> 1\n"


def test_rollback_with_nothing_in_the_store(run: Run) -> None:
    assert_one_line_error(run("rollback", "web"), 1, "web", "no versions")


# -- assets prune --------------------------------------------------------------------------------


def test_prune_keeps_the_newest_and_every_pinned_version(run: Run, tmp_path: Path) -> None:
    push(run, tmp_path, "web", "1", "2", "3", "4", "5")
    push(run, tmp_path, "db", "1", "2")
    run("pin", "web", "3")
    run("pin", "web", "2")  # pinned 2, previous 3
    dry = run("assets", "prune", "--keep", "1", "--ignore-hosts", "--dry-run", "--json")
    assert dry.code == 0, dry
    document = dry.json()
    assert document["removed"] == [
        {"name": "db", "version": "1"},
        {"name": "web", "version": "1"},
        {"name": "web", "version": "4"},
    ]
    assert {(k["name"], k["version"], k["why"]) for k in document["kept"]} == {
        ("db", "2", "newest"),
        ("web", "2", "pinned"),
        ("web", "3", "previous of a pin"),
        ("web", "5", "newest"),
    }
    assert document["dry_run"] is True
    assert stored(run, "web") == ["1", "2", "3", "4", "5"]  # a dry run deletes nothing

    result = run("assets", "prune", "web", "--keep", "1", "--ignore-hosts")
    assert result.code == 0, result
    assert result.out.startswith("web: deleted 1, 4; kept 2 (pinned), 3 (previous of a pin)")
    assert stored(run, "web") == ["2", "3", "5"]
    assert stored(run, "db") == ["1", "2"]  # another service: untouched


def test_prune_keep_must_be_at_least_one(run: Run, tmp_path: Path) -> None:
    push(run, tmp_path, "web", "1", "2")
    for keep in ("0", "-1"):
        result = run("assets", "prune", "--keep", keep, "--ignore-hosts")
        assert_one_line_error(result, 2, "--keep must be at least 1")
    assert_one_line_error(run("assets", "prune", "--ignore-hosts"), 2, "needs --keep")
    assert_one_line_error(run("assets", "--keep", "1"), 2, "go with `daybook assets prune`")
    assert_one_line_error(run("assets", "prune", "web", "db", "--keep", "1"), 2, "one SERVICE")
    assert_one_line_error(run("assets", "prune", "bad-name", "--keep", "1"), 2, "invalid")
    assert stored(run, "web") == ["1", "2"]


def test_prune_without_a_master_refuses_and_deletes_nothing(run: Run, tmp_path: Path) -> None:
    push(run, tmp_path, "web", "1", "2", "3")
    result = run("assets", "prune", "--keep", "1")
    assert_one_line_error(result, 1, "cannot ask the master at 127.0.0.1", "--ignore-hosts")
    assert stored(run, "web") == ["1", "2", "3"]


def test_assets_still_lists_one_service(run: Run, tmp_path: Path) -> None:
    push(run, tmp_path, "web", "1")
    assert stored(run, "web") == ["1"]
    assert run("assets", "prune", "--keep", "1", "--ignore-hosts", "--json").json()["removed"] == []


# -- prune against a running master ------------------------------------------------------------


def report_current(minion: ScriptedMinion, current: str) -> None:
    event = minion.next_event()
    minion.push.send_multipart(
        wire.encode(
            Report(
                report_id=f"{minion.host}-current",
                host=minion.host,
                sync_id=event.sync_id,
                epoch=event.epoch,
                seq=event.seq,
                state_digest=event.state_digest,
                pattern="web-*",
                services={"web": ServiceResult(present=("1", "2", "3"), current=current)},
                installed={"web": ("1", "2", "3")},
                started_at=time.time(),
                finished_at=time.time(),
            )
        )
    )


def test_prune_keeps_what_a_host_runs(
    context: zmq.Context[zmq.Socket[bytes]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings = fleet_settings(tmp_path)
    open_registry(settings.registry).update("web-*", lambda _: ("web",))
    for name in ("DAYBOOK_CONFIG", "DAYBOOK_MASTER", "DAYBOOK_PORT", "DAYBOOK_CONTROL_PORT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DAYBOOK_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("DAYBOOK_STORE", settings.store)
    monkeypatch.setenv("DAYBOOK_REGISTRY", settings.registry)
    monkeypatch.setenv("DAYBOOK_PORT", "0")  # the control port comes from master.json
    build = tmp_path / "build"
    build.mkdir()
    files = [str(make_asset(build, "web", v)) for v in ("1", "2", "3", "4")]
    assert main(["push", *files]) == 0
    master = RunningMaster(settings)
    try:
        [minion] = live_minions(context, master, "web-1")
        report_current(minion, "2")
        with master.client() as client:
            wait_for(
                lambda: client.fleet_status().hosts["web-1"].last_report is not None,
                "the report with current",
            )
        capsys.readouterr()
        assert main(["assets", "prune", "--keep", "1", "--json"]) == 0
        document = json.loads(capsys.readouterr().out)
        minion.close()
    finally:
        master.shutdown()
    assert document["removed"] == [{"name": "web", "version": "1"}, {"name": "web", "version": "3"}]
    assert {"name": "web", "version": "2", "why": "current on a host"} in document["kept"]


# -- map plan ----------------------------------------------------------------------------------


def test_map_plan_shows_the_pins_of_the_services_it_touches(run: Run, tmp_path: Path) -> None:
    push(run, tmp_path, "web", "1", "2")
    push(run, tmp_path, "db", "1")
    run("pin", "web", "1")
    run("pin", "db", "1")
    plan = run("map", "plan", "add", "web-*", "web", "--hosts", "web-1", "--json").json()
    assert plan["pins"] == {"web": "1"}  # db is mapped nowhere, before or after
    assert plan["gained"] == {"web": ["web-1"]}
    text = run("map", "plan", "add", "web-*", "web", "--hosts", "web-1").out
    assert "pinned (hosts run these, not their newest): web 1" in text
    assert run("map", "list", "--json").json() == {}  # pins are not mappings
