"""`daybook map plan`, `map set|add|remove --dry-run` and `map resolve --explain` as users
and scripts see them: against given hosts with no master, and against a running master."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq
from cli_runner import Run, cli_runner
from inprocess_fleet import RunningMaster, fleet_settings, live_minions

from daybook_testing.waiting import wait_for

TABLE = {
    "*": ["base"],
    "web-*": ["base", "nginx"],
    "web-prod-*": ["base", "nginx", "app"],
    "db-*": ["base", "postgres"],
}
HOSTS = "web-1,web-prod-1,web-prod-2,db-1,mail-1"


@pytest.fixture
def run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Run:
    unset = ("DAYBOOK_CONFIG", "DAYBOOK_CONTROL_PORT", "DAYBOOK_MASTER", "DAYBOOK_STORE")
    # The master's data dir and registry; port 0: its ports come from its master.json, and
    # with no master running there is none, so "no master" is known at once.
    env = {
        "DAYBOOK_DATA_DIR": str(tmp_path / "master"),
        "DAYBOOK_REGISTRY": f"file://{tmp_path / 'mappings.json'}",
        "DAYBOOK_PORT": "0",
        "DAYBOOK_HOSTNAME": "operator",
    }
    invoke = cli_runner(monkeypatch, capsys, unset=unset, env=env)
    for pattern, services in TABLE.items():
        assert invoke("map", "set", pattern, *services).code == 0
    return invoke


def table(run: Run) -> Any:
    return run("map", "list", "--json").json()


def test_plan_shows_who_gains_a_service_and_writes_nothing(run: Run) -> None:
    result = run("map", "plan", "add", "web-prod-*", "metrics", "--hosts", HOSTS, "--json")
    assert result.code == 0, result.err
    document = result.json()
    assert document["dry_run"] is True
    assert document["change"] == {
        "action": "add",
        "pattern": "web-prod-*",
        "before": ["base", "nginx", "app"],
        "after": ["base", "nginx", "app", "metrics"],
    }
    assert [change["host"] for change in document["changes"]] == ["web-prod-1", "web-prod-2"]
    assert document["changes"][0] == {
        "host": "web-prod-1",
        "up": None,
        "pattern_before": "web-prod-*",
        "pattern_after": "web-prod-*",
        "services_before": ["base", "nginx", "app"],
        "services_after": ["base", "nginx", "app", "metrics"],
        "gained": ["metrics"],
        "lost": [],
    }
    assert document["unchanged"] == 3
    assert document["gained"] == {"metrics": ["web-prod-1", "web-prod-2"]}
    assert document["lost"] == {}
    hosts = document["hosts"]
    assert hosts["from_master"] is None
    assert hosts["given"] == hosts["count"] == 5
    assert "master.json" in hosts["master_error"]
    assert table(run) == TABLE


def test_plan_in_words_says_the_master_did_not_answer(run: Run) -> None:
    result = run("map", "plan", "remove", "web-prod-*", "--hosts", HOSTS)
    assert result.code == 0, result.err
    lines = result.out.splitlines()
    assert lines[0] == "plan: remove web-prod-* (was: base, nginx, app)"
    assert lines[1].startswith("the master did not answer (")
    assert "planning against the 5 host(s) given with --hosts/--hosts-file only" in lines[1]
    assert "2 host(s) would change, 3 unchanged:" in result.out
    assert "web-prod-1  web-prod-* -> web-*; loses app" in result.out
    assert "app: -2 (web-prod-1, web-prod-2)" in result.out
    assert lines[-1] == "nothing was written (dry run)"
    assert "web-prod-*" in table(run)


def test_a_more_specific_pattern_is_a_change_even_with_the_same_services(run: Run) -> None:
    result = run("map", "plan", "set", "web-1", "base", "nginx", "--hosts", HOSTS, "--json")
    (change,) = result.json()["changes"]
    assert (change["host"], change["pattern_before"], change["pattern_after"]) == (
        "web-1",
        "web-*",
        "web-1",
    )
    assert change["gained"] == change["lost"] == []
    human = run("map", "plan", "set", "web-1", "base", "nginx", "--hosts", HOSTS)
    assert "web-1  web-* -> web-1; same services" in human.out
    assert "plan: web-1 = base, nginx (a new pattern)" in human.out


@pytest.mark.parametrize(
    ("argv", "gained", "lost"),
    [
        (["set", "db-*", "mysql"], {"mysql": ["db-1"]}, {"base": ["db-1"], "postgres": ["db-1"]}),
        (["add", "*", "ntp"], {"ntp": ["mail-1"]}, {}),
        (["remove", "db-*", "postgres"], {}, {"postgres": ["db-1"]}),
        (["remove", "*"], {}, {"base": ["mail-1"]}),
    ],
)
def test_dry_run_plans_set_add_and_remove_without_writing(
    run: Run, argv: list[str], gained: dict[str, list[str]], lost: dict[str, list[str]]
) -> None:
    result = run("map", *argv, "--dry-run", "--hosts", HOSTS, "--json")
    assert result.code == 0, result.err
    document = result.json()
    assert document["gained"] == gained
    assert document["lost"] == lost
    assert table(run) == TABLE
    # The same change planned with `map plan` gives the same answer.
    assert run("map", "plan", *argv, "--hosts", HOSTS, "--json").json() == document


def test_plan_a_whole_proposed_table_from_a_file(run: Run, tmp_path: Path) -> None:
    proposed = {**TABLE, "db-*": ["base", "mysql"], "mail-*": ["postfix"]}
    del proposed["web-prod-*"]
    path = tmp_path / "proposed.json"
    path.write_text(json.dumps(proposed))
    result = run("map", "plan", "file", str(path), "--hosts", HOSTS, "--json")
    assert result.code == 0, result.err
    document = result.json()
    assert document["change"]["patterns"] == {
        "added": ["mail-*"],
        "removed": ["web-prod-*"],
        "changed": ["db-*"],
    }
    assert document["gained"] == {"mysql": ["db-1"], "postfix": ["mail-1"]}
    assert document["lost"] == {
        "app": ["web-prod-1", "web-prod-2"],
        "base": ["mail-1"],
        "postgres": ["db-1"],
    }
    # `map list --json` output is a valid proposal, and plans no change.
    same = tmp_path / "same.json"
    same.write_text(run("map", "list", "--json").out)
    unchanged = run("map", "plan", "file", str(same), "--hosts", HOSTS)
    assert "no known host would change (5 unchanged)" in unchanged.out
    assert table(run) == TABLE


def test_hosts_come_from_a_file_too(run: Run, tmp_path: Path) -> None:
    hosts = tmp_path / "hosts.txt"
    hosts.write_text("# the mail hosts\nmail-1\n\nmail-2  # spare\n")
    result = run(
        "map", "plan", "add", "*", "ntp", "--hosts-file", str(hosts), "--hosts", "db-1", "--json"
    )
    assert result.code == 0, result.err
    assert result.json()["gained"] == {"ntp": ["mail-1", "mail-2"]}
    assert result.json()["hosts"]["given"] == 3


@pytest.mark.parametrize(
    ("argv", "code", "fragment"),
    [
        (["map", "plan", "set", "web-*", "x"], 1, "no known hosts to plan against"),
        (["map", "plan", "set", "web-?", "x", "--hosts", "a"], 2, "invalid host pattern"),
        (["map", "plan", "set", "web-*", "x", "--hosts", "bad_host"], 2, "invalid host name"),
        (["map", "plan", "add", "web-*", "bad.name", "--hosts", "a"], 2, "invalid service name"),
        (["map", "plan", "file", "/nonexistent.json", "--hosts", "a"], 2, "cannot read"),
        (["map", "plan", "set", "web-*", "x", "--hosts-file", "/nonexistent"], 2, "hosts file"),
        (["map", "set", "web-*", "x", "--hosts", "a"], 2, "go with --dry-run"),
    ],
)
def test_bad_plans_are_one_line_errors_and_change_nothing(
    run: Run, argv: list[str], code: int, fragment: str
) -> None:
    result = run(*argv)
    assert result.code == code, result
    assert len(result.err.strip().splitlines()) == 1, result.err
    assert result.err.startswith("daybook: ")
    assert fragment in result.err
    assert table(run) == TABLE


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ("{not json", "not valid JSON"),
        ('["web-*"]', "expected a JSON object"),
        ('{"web-?": ["a"]}', "invalid host pattern"),
        ('{"web-*": "a,b"}', "not a list of names"),
        ('{"web-*": ["a"], "WEB-*": ["b"]}', "appears twice"),
    ],
)
def test_a_bad_proposed_table_is_bad_input(
    run: Run, tmp_path: Path, content: str, fragment: str
) -> None:
    path = tmp_path / "proposed.json"
    path.write_text(content)
    result = run("map", "plan", "file", str(path), "--hosts", "a")
    assert result.code == 2
    assert fragment in result.err


# -- against a running master ---------------------------------------------------------------


@pytest.fixture
def master(tmp_path: Path, run: Run) -> Iterator[RunningMaster]:
    running = RunningMaster(fleet_settings(tmp_path))
    yield running
    running.shutdown()


def test_plan_against_the_masters_known_hosts(
    run: Run, master: RunningMaster, tmp_path: Path
) -> None:
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        minions = live_minions(context, master, "web-prod-1", "web-prod-2", "db-1")
        result = run("map", "plan", "remove", "web-prod-*", "app", "--json")
        assert result.code == 0, result.err
        document = result.json()
        assert document["hosts"]["from_master"] == 3
        assert document["hosts"]["master_error"] is None
        assert document["lost"] == {"app": ["web-prod-1", "web-prod-2"]}
        assert all(change["up"] is True for change in document["changes"])

        # Hosts given on the command line are planned for as well.
        extra = run("map", "plan", "remove", "web-prod-*", "app", "--hosts", "web-prod-9")
        assert "against 4 known host(s): 3 from the master, 1 more given" in extra.out

        # A host whose heartbeats stopped is still known, and marked down.
        minions[1].close()
        with master.client() as client:
            wait_for(lambda: not client.fleet_status().hosts["web-prod-2"].up, "web-prod-2 down")
        human = run("map", "remove", "web-prod-*", "app", "--dry-run")
        assert human.code == 0, human.err
        assert "of them down)" in human.out
        assert "web-prod-2 (down)  loses app" in human.out
        assert table(run) == TABLE
        for minion in (minions[0], minions[2]):
            minion.close()
    finally:
        context.destroy(linger=0)


# -- explain -------------------------------------------------------------------------------


def test_explain_says_why_the_winner_wins_and_the_others_lose(run: Run) -> None:
    run("map", "set", "web-prod-1*", "solo")
    result = run("map", "resolve", "web-prod-1", "--explain")
    assert result.code == 0
    lines = result.out.splitlines()
    assert lines[0] == "web-prod-1: web-prod-1* -> solo"
    assert "4 of 5 pattern(s) match web-prod-1" in lines[1]
    assert "patterns are not merged" in lines[1]
    assert lines[2].split() == ["1.", "web-prod-1*", "->", "solo"]
    assert lines[3].strip().startswith("wins: 10 literal character(s)")
    assert "loses: fewer literal characters (9 < 10)" in result.out
    assert result.out.count("loses:") == 3

    run("map", "set", "x*b-1", "x")
    run("map", "set", "*eb-1", "y")
    run("map", "set", "x*b-*1", "z")
    tie = run("map", "resolve", "xeb-1", "--explain").out
    assert "xeb-1: x*b-1 -> x" in tie
    assert "loses: more stars (2 > 1)" in tie
    assert "loses: shorter literal prefix (0 < 1 characters before the first star)" in tie


def test_explain_when_nothing_matches(run: Run) -> None:
    run("map", "remove", "*")
    result = run("map", "resolve", "mail-1", "--explain")
    assert result.out.splitlines() == [
        "mail-1: no pattern matches",
        "none of the 3 pattern(s) matches mail-1, so it gets no services",
    ]
