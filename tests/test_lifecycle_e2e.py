"""End to end: the release lifecycle on real `daybook minion` processes (installing through
their install child, on the embedded file store): keep 2 and `current` across pushes, and a
hook that fails on one host, with and without the revert."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from process_fleet import ProcessFleet

from daybook.install.installer import installed_versions
from daybook.registry.file import FileRegistry
from daybook.store.local import LocalStore

pytestmark = pytest.mark.e2e

# Fails when `current` moves to version 3; says what it ran for either way.
HOOK = '#!/bin/sh\necho "hook for $DAYBOOK_VERSION"\n[ "$DAYBOOK_VERSION" != 3 ]\n'


def sync(fleet: ProcessFleet) -> tuple[int, dict[str, Any]]:
    result = fleet.cli("sync", "--json", "--wait", "--timeout", "20")
    assert result.stdout, result.stderr
    document: dict[str, Any] = json.loads(result.stdout)
    return result.returncode, document


def lifecycle_env(fleet: ProcessFleet, host: str, **extra: str) -> dict[str, str]:
    hooks = fleet.root / host / "hooks"
    hooks.mkdir(parents=True)
    hooks.chmod(0o755)
    return {
        "DAYBOOK_KEEP_VERSIONS": "2",
        "DAYBOOK_ACTIVATE": "true",
        "DAYBOOK_HOOKS_DIR": str(hooks),
        **extra,
    }


def test_keep_two_with_current_and_a_failing_hook(tmp_path: Path) -> None:
    fleet = ProcessFleet(
        tmp_path, store=LocalStore(tmp_path / "store"), registry=FileRegistry(tmp_path / "m.json")
    )
    try:
        fleet.push("web", "1")
        fleet.push("web", "2")
        fleet.map("web-*", "web")
        fleet.start_master()
        # web-1: no hook; web-2: the hook fails for 3; web-3: the same, with the revert.
        envs = {
            "web-1": lifecycle_env(fleet, "web-1"),
            "web-2": lifecycle_env(fleet, "web-2"),
            "web-3": lifecycle_env(fleet, "web-3", DAYBOOK_REVERT_ON_HOOK_FAILURE="true"),
        }
        for host in ("web-2", "web-3"):
            hook = Path(envs[host]["DAYBOOK_HOOKS_DIR"]) / "web"
            hook.write_text(HOOK)
            hook.chmod(0o755)
        for host, env in envs.items():
            fleet.start_minion(host, **env)
        fleet.wait_ready(*envs)

        code, document = sync(fleet)
        assert code == 0, document
        for host in envs:
            assert installed_versions(fleet.install_dir(host) / "web") == ["1", "2"]
            assert os.readlink(fleet.install_dir(host) / "web" / "current") == "2"

        fleet.push("web", "3")
        code, document = sync(fleet)
        assert code == 1, document
        results = document["results"]
        assert results["web-1"]["ok"] is True
        assert results["web-1"]["services"]["web"]["current"] == "3"
        for host in ("web-2", "web-3"):
            web = results[host]["services"]["web"]
            assert results[host]["ok"] is False
            assert web["hook"]["ok"] is False
            assert web["hook"]["exit"] == 1
            assert "hook for 3" in web["hook"]["output"]
        assert results["web-2"]["services"]["web"]["current"] == "3"
        assert results["web-3"]["services"]["web"]["current"] == "2"
        assert "current moved back to 2" in results["web-3"]["services"]["web"]["hook"]["output"]

        # On disk: the newest two everywhere; `current` where each result said.
        for host, current in (("web-1", "3"), ("web-2", "3"), ("web-3", "2")):
            web_dir = fleet.install_dir(host) / "web"
            assert installed_versions(web_dir) == ["2", "3"], host
            assert os.readlink(web_dir / "current") == current, host

        # The human summary says it briefly.
        human = fleet.cli("sync", "--wait", "--timeout", "20")
        assert human.returncode == 1
        assert "current 2; hook FAILED (exit 1)" in human.stdout
    finally:
        failures = fleet.close()
        assert not failures, "\n".join(failures)
