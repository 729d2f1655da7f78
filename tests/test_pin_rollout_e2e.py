"""A pin rolled out batch by batch, end to end: `daybook pin --batch` halts on a host whose
hook fails, the hosts it never reached keep their version through later syncs, and an abort
puts the old pin back everywhere. Real master and minion processes, the embedded backends."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from process_fleet import ProcessFleet

from daybook.registry.file import FileRegistry
from daybook.store.local import LocalStore

pytestmark = pytest.mark.e2e

HOSTS = ("h0", "h1", "h2", "h3", "h4", "h5")
# h3's hook refuses version 2.
HOOK = '#!/bin/sh\n[ "$DAYBOOK_VERSION" != 2 ]\n'


def cli_json(fleet: ProcessFleet, *args: str) -> tuple[int, dict[str, Any]]:
    result = fleet.cli(*args, "--json")
    assert result.stdout, result.stderr
    document: dict[str, Any] = json.loads(result.stdout)
    return result.returncode, document


def currents(fleet: ProcessFleet) -> dict[str, str]:
    return {host: os.readlink(fleet.install_dir(host) / "web" / "current") for host in HOSTS}


def sync_all(fleet: ProcessFleet) -> dict[str, Any]:
    _code, document = cli_json(fleet, "sync", "--wait", "--timeout", "20")
    return document


def test_a_pin_rolled_out_in_batches_halts_and_leaves_the_rest_where_they_were(
    tmp_path: Path,
) -> None:
    fleet = ProcessFleet(
        tmp_path, store=LocalStore(tmp_path / "store"), registry=FileRegistry(tmp_path / "m.json")
    )
    try:
        fleet.push("web", "1")
        fleet.push("web", "2")
        fleet.map("h*", "web")
        assert fleet.cli("pin", "web", "1").returncode == 0
        fleet.start_master()
        for host in HOSTS:
            hooks = fleet.root / host / "hooks"
            hooks.mkdir(parents=True)
            hooks.chmod(0o755)
            if host == "h3":
                (hooks / "web").write_text(HOOK)
                (hooks / "web").chmod(0o755)
            fleet.start_minion(host, DAYBOOK_ACTIVATE="true", DAYBOOK_HOOKS_DIR=str(hooks))
        fleet.wait_ready(*HOSTS)
        sync_all(fleet)
        assert set(currents(fleet).values()) == {"1"}

        code, rollout = cli_json(
            fleet, "pin", "web", "2", "--batch", "2", "--wait", "--timeout", "20"
        )
        assert code == 1, rollout
        assert (rollout["service"], rollout["pinned"]) == ("web", "2")
        assert rollout["halted"] is True
        assert rollout["batches"] == [["h0", "h1"], ["h2", "h3"], ["h4", "h5"]]
        assert rollout["failed"] == {"h3": "failed"}
        assert rollout["not_reached"] == ["h4", "h5"]
        assert currents(fleet) == {
            "h0": "2", "h1": "2", "h2": "2", "h3": "2", "h4": "1", "h5": "1",
        }  # fmt: skip

        # The halted rollout owns the pin: it reaches the hosts it reached, no others.
        pin = FileRegistry(tmp_path / "m.json").read().pins["web"]
        assert (pin.version, pin.previous, pin.hosts) == ("2", "1", ("h0", "h1", "h2", "h3"))
        # A later sync of every host (an auto-sync would be the same) does not carry it on.
        document = sync_all(fleet)
        assert document["results"]["h4"]["services"]["web"]["current"] == "1"
        assert currents(fleet)["h4"] == currents(fleet)["h5"] == "1"

        # Aborted, the rollout puts the old pin back, and every host goes back to 1.
        aborted = fleet.cli("sync", "--abort", rollout["sync_id"])
        assert aborted.returncode == 0, aborted.stderr
        assert "never reached: h4, h5" in aborted.stdout
        restored = FileRegistry(tmp_path / "m.json").read().pins["web"]
        assert (restored.version, restored.hosts) == ("1", None)
        document = sync_all(fleet)
        assert document["ok"] is True, document
        assert set(currents(fleet).values()) == {"1"}
    finally:
        failures = fleet.close()
        assert not failures, "\n".join(failures)


def test_pin_options_of_a_rollout_need_batch(tmp_path: Path) -> None:
    fleet = ProcessFleet(
        tmp_path, store=LocalStore(tmp_path / "store"), registry=FileRegistry(tmp_path / "m.json")
    )
    try:
        fleet.push("web", "1")
        for args in (("--wait",), ("--max-failures", "1"), ("--target", "h*")):
            result = fleet.cli("pin", "web", "1", *args)
            assert result.returncode == 2, result
            assert "goes with --batch" in result.stderr
        result = fleet.cli("rollback", "web", "--batch", "0")
        assert result.returncode == 2
    finally:
        failures = fleet.close()
        assert not failures, "\n".join(failures)
