"""`daybook status` with several masters: a row for each (leader, standby, unreachable)
and the fleet as the leader sees it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fake_control import FakeControl, Script, silent

from daybook.cli.main import main
from daybook.model.fleet import FleetStatus, HostStatus
from daybook.model.leadership import LEADER, STANDBY, Term, answered_view
from daybook.model.messages import ControlReply, ControlRequest


def publish_address(control: FakeControl) -> str:
    """The HOST:PUBLISH_PORT whose control port (publish + 2) is this fake's."""
    host, port = control.endpoint.removeprefix("tcp://").rsplit(":", 1)
    return f"{host}:{int(port) - 2}"


def answering(
    term: Term, hosts: tuple[str, ...], *, standby: bool = False, leading: bool | None = True
) -> Script:
    def answer(request: ControlRequest) -> ControlReply:
        status = FleetStatus(
            epoch=1,
            now=10.0,
            hosts={host: HostStatus(host=host, up=True, last_seen=9.0) for host in hosts},
        )
        return ControlReply(
            request.request_id, status=status, leader=term, standby=standby, leading=leading
        )

    return answer


# The address an operator asks at, and the one the master advertises as the term's holder.
ASKED, ADVERTISED = "127.0.0.1:4505", "master1:4505"


@pytest.mark.parametrize(
    ("standby", "leading", "role"),
    [
        (False, True, LEADER),
        (False, False, STANDBY),
        (True, False, STANDBY),
        (True, None, STANDBY),
        (False, None, LEADER),  # a master from before replies said: it leads alone
    ],
)
def test_a_masters_role_is_what_its_answer_says_not_whom_the_term_names(
    standby: bool, leading: bool | None, role: str
) -> None:
    term = Term(number=7, holder=ADVERTISED, since=5.0)
    view = answered_view(ASKED, term, standby=standby, leading=leading)
    assert (view.address, view.role, view.term, view.since) == (ASKED, role, 7, 5.0)


def test_a_master_outside_leader_election_leads_with_no_term() -> None:
    view = answered_view(ASKED, None, standby=False, leading=True)
    assert (view.role, view.term, view.since) == (LEADER, None, None)


@pytest.fixture
def masters() -> Iterator[list[FakeControl]]:
    started: list[FakeControl] = []
    yield started
    for master in started:
        master.close()


def status(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    masters: list[FakeControl],
    *argv: str,
) -> tuple[int, str, str]:
    for name in ("DAYBOOK_CONFIG", "DAYBOOK_PORT", "DAYBOOK_CONTROL_PORT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DAYBOOK_DATA_DIR", str(tmp_path / "operator"))
    monkeypatch.setenv("DAYBOOK_INSECURE_TRANSPORT", "true")
    monkeypatch.setenv("DAYBOOK_MASTER", ",".join(publish_address(m) for m in masters))
    capsys.readouterr()
    code = main(["status", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_every_master_has_a_row_and_the_fleet_is_the_leaders(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    masters: list[FakeControl],
) -> None:
    gone = FakeControl(silent)
    masters.append(gone)
    leader = FakeControl(lambda request: None)  # scripted below, once its address is known
    masters.append(leader)
    term = Term(number=6, holder=publish_address(leader), since=1_700_000_000.0)
    leader.script = answering(term, ("web-1", "web-2"))
    # A standby answers status too, with its own (stale) view of the fleet.
    masters.append(FakeControl(answering(term, ("stale-1",), leading=False)))
    code, out, _ = status(monkeypatch, capsys, tmp_path, masters, "--json")
    assert code == 0
    document = json.loads(out)
    assert set(document["hosts"]) == {"web-1", "web-2"}, "the leader's view of the fleet"
    rows = [(m["address"], m["role"], m["term"]) for m in document["masters"]]
    assert rows == [
        (publish_address(gone), "unreachable", None),
        (publish_address(leader), "leader", 6),
        (publish_address(masters[2]), "standby", 6),
    ]
    assert document["masters"][1]["since"].startswith("2023-11-14")


def test_the_human_table_names_each_masters_role(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    masters: list[FakeControl],
) -> None:
    term = Term(number=2, holder="elsewhere:4505", since=1.0)
    masters.append(FakeControl(answering(term, ("web-1",), standby=True, leading=False)))
    masters.append(FakeControl(silent))
    code, out, _ = status(monkeypatch, capsys, tmp_path, masters)
    assert code == 0
    assert "web-1" in out, "a standby's view when no leader answers"
    roles = {line.split()[0]: line.split()[1] for line in out.splitlines() if line.strip()}
    assert roles[publish_address(masters[0])] == "standby"
    assert roles[publish_address(masters[1])] == "unreachable"


def test_the_only_master_leads_though_it_advertises_another_name(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    masters: list[FakeControl],
) -> None:
    # Asked at 127.0.0.1, it holds the term as its host name: a leader all the same.
    term = Term(number=1, holder="master1:4505", since=1.0)
    masters.append(FakeControl(answering(term, ("web-1",))))
    code, out, _ = status(monkeypatch, capsys, tmp_path, masters, "--json")
    assert code == 0
    (row,) = json.loads(out)["masters"]
    assert (row["address"], row["role"], row["term"]) == (publish_address(masters[0]), LEADER, 1)


def test_no_master_answering_is_one_line_naming_each(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    masters: list[FakeControl],
) -> None:
    masters.extend([FakeControl(silent), FakeControl(silent)])
    code, _, err = status(monkeypatch, capsys, tmp_path, masters)
    assert code == 1
    assert "cannot reach any master" in err
    assert all(m.endpoint in err for m in masters)
