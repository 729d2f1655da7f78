"""`daybook pull` with the release lifecycle: keep N, `current`, hooks and pins through the
command, its `--json` and human output, its settings; and nothing changed when it is off."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from archives import make_asset
from cli_runner import Run, cli_runner

from daybook.config import load_settings
from daybook.model.pins import Pin
from daybook.model.releases import ReleasePolicy
from daybook.registry.base import Snapshot
from daybook.registry.file import FileRegistry


@pytest.fixture
def run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Run:
    lifecycle = ("KEEP_VERSIONS", "ACTIVATE", "HOOKS_DIR", "REVERT_ON_HOOK_FAILURE")
    unset = ["DAYBOOK_CONFIG", *(f"DAYBOOK_{name}" for name in lifecycle)]
    env = {
        "DAYBOOK_DATA_DIR": str(tmp_path / "data"),
        "DAYBOOK_HOSTNAME": "web-1",
        "DAYBOOK_KEY_PORT": "0",
    }
    return cli_runner(monkeypatch, capsys, unset=unset, env=env)


@pytest.fixture
def push(run: Run, tmp_path: Path) -> Callable[..., None]:
    build = tmp_path / "build"
    build.mkdir()

    def push_versions(*versions: str, service: str = "web") -> None:
        files = [str(make_asset(build, service, v)) for v in versions]
        assert run("push", *files).code == 0

    return push_versions


def write_hook(hooks: Path, service: str, script: str) -> None:
    hooks.mkdir(mode=0o755, exist_ok=True)
    (hooks / service).write_text("#!/bin/sh\n" + script)
    (hooks / service).chmod(0o755)


def test_keep_two_across_four_pushes_with_current_and_a_hook(
    run: Run, push: Callable[..., None], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DAYBOOK_KEEP_VERSIONS", "2")
    monkeypatch.setenv("DAYBOOK_ACTIVATE", "true")
    monkeypatch.setenv("DAYBOOK_HOOKS_DIR", str(tmp_path / "hooks"))
    write_hook(tmp_path / "hooks", "web", 'echo "restarted $DAYBOOK_VERSION"\n')
    run("map", "set", "web-*", "web")
    push("1", "2")
    first = run("pull", "--json")
    assert first.code == 0, first.err
    assert first.json()["services"]["web"] == {
        "installed": ["1", "2"],
        "present": [],
        "failed": {},
        "current": "2",
        "hook": {"ok": True, "exit": 0, "output": "restarted 2\n"},
    }
    push("3", "4")
    second = run("pull", "--json")
    assert second.code == 0, second.err
    assert second.json()["services"]["web"] == {
        "installed": ["3", "4"],
        "present": [],
        "failed": {},
        "removed": ["2", "1"],
        "current": "4",
        "previous": "2",
        "hook": {"ok": True, "exit": 0, "output": "restarted 4\n"},
    }
    web = tmp_path / "data" / "install" / "web"
    assert sorted(os.listdir(web)) == ["3", "4", "current"]
    assert os.readlink(web / "current") == "4"

    push("5")
    human = run("pull")
    assert human.code == 0
    assert human.out.splitlines()[1:] == [
        "  web: installed 5; present 4",
        "  web: current 5 (was 4); removed 3; hook ok (exit 0)",
    ]
    again = run("pull", "--json").json()["services"]["web"]
    assert again == {"installed": [], "present": ["4", "5"], "failed": {}, "current": "5"}


def test_a_relative_hooks_dir_runs_its_hook(
    run: Run, push: Callable[..., None], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The hook was found against the current directory, then run from the install path.
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DAYBOOK_ACTIVATE", "1")
    monkeypatch.setenv("DAYBOOK_HOOKS_DIR", "relhooks")
    write_hook(tmp_path / "relhooks", "web", 'echo "ran $DAYBOOK_VERSION"\n')
    run("map", "set", "web-*", "web")
    push("1")
    result = run("pull", "--json")
    assert result.code == 0, result.out
    assert result.json()["services"]["web"]["hook"] == {"ok": True, "exit": 0, "output": "ran 1\n"}


def test_a_failing_hook_fails_the_pull(
    run: Run, push: Callable[..., None], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DAYBOOK_ACTIVATE", "1")
    monkeypatch.setenv("DAYBOOK_HOOKS_DIR", str(tmp_path / "hooks"))
    monkeypatch.setenv("DAYBOOK_REVERT_ON_HOOK_FAILURE", "true")
    write_hook(tmp_path / "hooks", "web", '[ "$DAYBOOK_VERSION" = 1 ] || { echo bad; exit 4; }\n')
    run("map", "set", "web-*", "web")
    push("1")
    assert run("pull").code == 0
    push("2")
    failed = run("pull")
    assert failed.code == 1
    lines = failed.out.splitlines()
    assert "  web: current 1; hook FAILED (exit 4)" in lines
    assert "    | bad" in lines
    # It stays failed on the next pull, until current moves on (or the mark is deleted).
    assert run("pull").code == 1
    assert os.readlink(tmp_path / "data" / "install" / "web" / "current") == "1"


def test_a_failing_hook_without_the_revert_is_a_line_on_stderr(
    run: Run, push: Callable[..., None], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With --json, stdout is the document only: the failure still reaches stderr."""
    monkeypatch.setenv("DAYBOOK_ACTIVATE", "1")
    monkeypatch.setenv("DAYBOOK_HOOKS_DIR", str(tmp_path / "hooks"))
    write_hook(tmp_path / "hooks", "web", "exit 4\n")
    run("map", "set", "web-*", "web")
    push("1")
    failed = run("pull", "--json")
    assert failed.code == 1
    assert failed.json()["services"]["web"]["hook"]["exit"] == 4
    assert failed.err.splitlines() == ["daybook: WARNING: web: hook failed for 1 (exit 4)"]


def test_a_pin_in_the_registry_installs_and_activates_an_older_version(
    run: Run, push: Callable[..., None], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DAYBOOK_KEEP_VERSIONS", "1")
    monkeypatch.setenv("DAYBOOK_ACTIVATE", "true")
    run("map", "set", "web-*", "web")
    push("1", "2", "3")
    assert run("pull", "--json").json()["services"]["web"]["installed"] == ["3"]

    read = FileRegistry.read

    def pinned(self: FileRegistry) -> Snapshot:
        return dataclasses.replace(read(self), pins={"web": Pin("web", "1")})

    monkeypatch.setattr(FileRegistry, "read", pinned)
    result = run("pull", "--json").json()["services"]["web"]
    assert result["installed"] == ["1"]
    assert (result["current"], result["previous"]) == ("1", "3")
    assert result["kept"] == {"1": "current"}
    assert "removed" not in result
    # The pin lifted: back to the newest, and the old pinned version goes.
    monkeypatch.setattr(FileRegistry, "read", read)
    after = run("pull", "--json").json()["services"]["web"]
    assert (after["current"], after["previous"], after["removed"]) == ("3", "1", ["1"])


def test_dry_run_lists_only_what_retention_would_keep(
    run: Run, push: Callable[..., None], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DAYBOOK_KEEP_VERSIONS", "2")
    run("map", "set", "web-*", "web")
    push("1", "2", "3")
    result = run("pull", "--dry-run", "--json").json()["services"]["web"]
    assert result == {"installed": ["2", "3"], "present": [], "failed": {}}


def test_per_service_settings_in_the_config_file(
    run: Run, push: Callable[..., None], tmp_path: Path
) -> None:
    config = tmp_path / "daybook.toml"
    config.write_text(
        f'data_dir = "{tmp_path / "data"}"\n'
        "keep_versions = 1\n"
        "[services.api]\nkeep_versions = 0\nactivate = true\n"
    )
    (tmp_path / "hooks").mkdir()  # beside the config file: the default hooks dir
    write_hook(tmp_path / "hooks", "api", "echo api hook\n")
    run("map", "set", "web-*", "web", "api")
    push("1", "2")
    push("1", "2", service="api")
    result = run("--config", str(config), "pull", "--json")
    assert result.code == 0, result.err
    services = result.json()["services"]
    assert services["web"] == {"installed": ["2"], "present": [], "failed": {}}
    assert services["api"]["installed"] == ["1", "2"]
    assert services["api"]["current"] == "2"
    assert services["api"]["hook"]["output"] == "api hook\n"


@pytest.mark.parametrize(
    ("table", "fragment"),
    [
        ("[services.web]\nkeep = 3\n", "[services.web]: unknown setting(s) keep"),
        ('[services."no-dash"]\nactivate = true\n', "'no-dash' is not a valid service name"),
        ("[services.web]\nkeep_versions = -1\n", "invalid value -1 for keep_versions"),
        ('[services.web]\nactivate = "maybe"\n', "invalid value 'maybe' for activate"),
        ("services = 3\n", "services must be tables"),
    ],
)
def test_bad_per_service_settings_are_one_line(
    run: Run, tmp_path: Path, table: str, fragment: str
) -> None:
    config = tmp_path / "daybook.toml"
    config.write_text(table)
    result = run("--config", str(config), "pull")
    assert result.code == 2
    lines = result.err.strip().splitlines()
    assert len(lines) == 1
    assert fragment in lines[0]
    assert "Traceback" not in result.err


def test_nothing_configured_is_todays_output(
    run: Run, push: Callable[..., None], tmp_path: Path
) -> None:
    run("map", "set", "web-*", "web")
    push("1", "2")
    install_dir = tmp_path / "data" / "install"
    first = run("pull")
    assert first.out == (
        f"web-1: pattern web-* -> 1 service(s) in {install_dir}\n  web: installed 1, 2\n"
    )
    push("3")
    assert run("pull", "--json").json()["services"]["web"] == {
        "installed": ["3"],
        "present": ["1", "2"],
        "failed": {},
    }
    assert sorted(os.listdir(install_dir / "web")) == ["1", "2", "3"]


def test_the_settings_and_their_defaults(tmp_path: Path) -> None:
    plain = load_settings(env={"DAYBOOK_DATA_DIR": str(tmp_path)})
    assert not plain.release_lifecycle_on
    assert plain.hooks_path == tmp_path / "hooks"  # no config file: in the data dir
    assert (plain.hook_timeout_s, plain.revert_on_hook_failure) == (60.0, False)
    assert plain.release_policy("web") == ReleasePolicy(keep_versions=0, activate=False)

    config = tmp_path / "etc" / "daybook.toml"
    config.parent.mkdir()
    config.write_text("activate = true\n[services.db]\nactivate = false\nkeep_versions = 2\n")
    env = {
        "DAYBOOK_DATA_DIR": str(tmp_path),
        "DAYBOOK_KEEP_VERSIONS": "4",
        "DAYBOOK_HOOK_TIMEOUT_S": "2.5",
    }
    settings = load_settings(config_path=str(config), env=env)
    assert settings.release_lifecycle_on
    assert settings.hooks_path == tmp_path / "etc" / "hooks"  # beside the config file
    assert settings.hook_timeout_s == 2.5
    assert settings.release_policy("web") == ReleasePolicy(keep_versions=4, activate=True)
    assert settings.release_policy("db") == ReleasePolicy(keep_versions=2, activate=False)
    only_one = load_settings(
        config_path=str(config),
        env={"DAYBOOK_DATA_DIR": str(tmp_path), "DAYBOOK_ACTIVATE": "no"},
    )
    assert only_one.release_lifecycle_on  # db keeps 2
    env_dir = {"DAYBOOK_DATA_DIR": str(tmp_path), "DAYBOOK_HOOKS_DIR": "/opt/hooks"}
    assert load_settings(config_path=str(config), env=env_dir).hooks_path == Path("/opt/hooks")
