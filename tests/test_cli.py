"""The `daybook` command as users and scripts see it: output, JSON and exit codes."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from archives import make_asset
from cli_runner import Result, Run, cli_runner

from daybook.cli.main import _group_of, build_parser


@pytest.fixture
def run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Run:
    # No master here to learn a key from (DAYBOOK_KEY_PORT 0): a push's note to the master
    # fails at once.
    env = {"DAYBOOK_DATA_DIR": str(tmp_path / "data"), "DAYBOOK_HOSTNAME": "web-prod-1"}
    env["DAYBOOK_KEY_PORT"] = "0"
    return cli_runner(monkeypatch, capsys, unset=["DAYBOOK_CONFIG"], env=env)


@pytest.fixture
def build(tmp_path: Path) -> Path:
    directory = tmp_path / "build"
    directory.mkdir()
    return directory


def assert_one_line_error(result: Result, code: int, fragment: str) -> None:
    assert result.code == code, result
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    assert lines[0].startswith("daybook: ")
    assert fragment in lines[0]
    assert "Traceback" not in result.err


# -- map ---------------------------------------------------------------------------------------


def test_map_set_add_remove_list(run: Run) -> None:
    assert run("map", "set", "web-*", "a", "b", "a").code == 0
    assert run("map", "add", "web-*", "c", "a").code == 0
    assert run("map", "add", "db-*", "d").code == 0
    assert run("map", "list", "--json").json() == {"db-*": ["d"], "web-*": ["a", "b", "c"]}
    assert run("map", "remove", "web-*", "b").code == 0
    assert run("map", "list", "--json").json()["web-*"] == ["a", "c"]
    # Removing the last services removes the pattern, with exit 0.
    assert run("map", "remove", "web-*", "a", "c").code == 0
    assert run("map", "list", "--json").json() == {"db-*": ["d"]}
    assert run("map", "remove", "db-*").code == 0
    assert run("map", "list", "--json").json() == {}


def test_map_patterns_are_stored_lower_case(run: Run) -> None:
    assert run("map", "set", "WEB-*", "a").code == 0
    assert run("map", "list", "--json").json() == {"web-*": ["a"]}


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["map", "set", "web-?", "a"], "invalid host pattern 'web-?'"),
        (["map", "set", "web/*", "a"], "invalid host pattern"),
        (["map", "add", "web-*", "bad-name"], "invalid service name 'bad-name'"),
        (["map", "resolve", "bad host"], "invalid host name"),
        (["assets", "bad.name"], "invalid service name"),
        (["pull", "--host", "../etc"], "invalid host name"),
        (["pin", "web", "current"], "version 'current' is reserved"),
        # Empty on the command line is bad input, not "not given".
        (["pull", "--host", ""], "invalid host name ''"),
        (["sync", "--target", ""], "invalid host pattern ''"),
        (["--hostname", "", "pull"], "--hostname: an empty value"),
        (["pull", "--install-dir", ""], "--install-dir: an empty value"),
    ],
)
def test_bad_input_exits_2_with_one_line(run: Run, argv: list[str], fragment: str) -> None:
    assert_one_line_error(run(*argv), 2, fragment)
    assert run("map", "list", "--json").json() == {}


def test_a_system_error_no_command_expected_is_still_one_line(
    run: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The last line of defence: an OSError that escaped a command's own handling."""
    from daybook.registry.file import FileRegistry

    def refuse(_registry: FileRegistry) -> None:
        raise PermissionError(13, "Permission denied", "/srv/daybook/mappings.json")

    monkeypatch.setattr(FileRegistry, "read", refuse)
    result = run("map", "list")
    assert_one_line_error(result, 1, "daybook: Permission denied: /srv/daybook/mappings.json")
    assert "Traceback" not in result.err


def test_map_resolve_and_explain(run: Run) -> None:
    run("map", "set", "*", "base")
    run("map", "set", "web-*", "web")
    run("map", "set", "web-prod-*", "prod", "extra")
    assert run("map", "resolve", "web-prod-1", "--json").json() == {
        "host": "web-prod-1",
        "pattern": "web-prod-*",
        "services": ["prod", "extra"],
    }
    explained = run("map", "resolve", "WEB-prod-1", "--explain", "--json").json()
    assert [c["pattern"] for c in explained["candidates"]] == ["web-prod-*", "web-*", "*"]
    human = run("map", "resolve", "web-prod-1", "--explain")
    assert "wins" in human.out
    assert "web-prod-*" in human.out.splitlines()[0]
    assert run("map", "resolve", "x", "--json").json()["pattern"] == "*"
    run("map", "remove", "*")
    assert run("map", "resolve", "db-1", "--json").json() == {
        "host": "db-1",
        "pattern": None,
        "services": [],
    }


# -- push and assets ---------------------------------------------------------------------------


def test_push_then_list(run: Run, build: Path) -> None:
    files = [make_asset(build, "api", v) for v in ("1.10", "1.9")]
    files.append(make_asset(build, "api_v2", "1"))
    result = run("push", *map(str, files), "--json")
    assert result.code == 0, result.err
    assert {row["status"] for row in result.json()} == {"uploaded"}
    listing = run("assets", "--json").json()
    assert [(a["name"], a["version"]) for a in listing] == [
        ("api", "1.9"),
        ("api", "1.10"),
        ("api_v2", "1"),
    ]
    assert all(a["size"] > 0 for a in listing)
    assert [a["version"] for a in run("assets", "api", "--json").json()] == ["1.9", "1.10"]


def test_push_is_idempotent_and_never_overwrites_without_force(run: Run, build: Path) -> None:
    path = make_asset(build, "api", "1")
    assert run("push", str(path)).code == 0
    assert run("push", str(path), "--json").json()[0]["status"] == "unchanged"
    changed = make_asset(build, "api", "1", {"other": b"content"})
    refused = run("push", str(changed), "--json")
    assert refused.code == 1
    assert "--force" in refused.json()[0]["error"]
    assert run("push", str(changed), "--force", "--json").json()[0]["status"] == "uploaded"


def test_push_with_no_master_to_tell_is_a_note(run: Run, build: Path) -> None:
    result = run("push", str(make_asset(build, "web", "1")))
    assert result.code == 0, result.err
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    assert lines[0].startswith("daybook: note: the master was not told of the push")


def test_push_with_explicit_name_and_version(run: Run, build: Path) -> None:
    path = make_asset(build, "api", "1")
    renamed = path.rename(build / "whatever.tgz")
    assert run("push", str(renamed), "--name", "svc", "--version", "2.0").code == 0
    assert [(a["name"], a["version"]) for a in run("assets", "--json").json()] == [("svc", "2.0")]


@pytest.mark.parametrize(
    ("flags", "fragment"),
    [
        (["--name", ""], "invalid service name ''"),
        (["--version", ""], "invalid version ''"),
        (["--name", "", "--version", "2"], "invalid service name ''"),
    ],
)
def test_push_refuses_an_empty_name_or_version(
    run: Run, build: Path, flags: list[str], fragment: str
) -> None:
    path = make_asset(build, "api", "1")
    assert_one_line_error(run("push", str(path), *flags), 2, fragment)
    assert run("assets", "--json").json() == []


@pytest.mark.parametrize(
    ("filename", "content", "fragment"),
    [
        ("api.tar.gz", None, "not an asset name"),
        ("api-..tar.gz", None, "not an asset name"),
        ("api-1.tar.gz", b"not gzip at all", "api-1.tar.gz"),
        # The name of the link to the running version: such a version could never run.
        ("api-current.tar.gz", None, "version 'current' is reserved"),
    ],
)
def test_push_refuses_bad_files_and_uploads_nothing(
    run: Run, build: Path, filename: str, content: bytes | None, fragment: str
) -> None:
    good = make_asset(build, "good", "1")
    bad = build / filename
    if content is None:
        bad.write_bytes(make_asset(build, "tmp", "1").read_bytes())
    else:
        bad.write_bytes(content)
    assert_one_line_error(run("push", str(good), str(bad)), 2, fragment)
    assert run("assets", "--json").json() == []


def test_push_refuses_an_unsafe_archive(run: Run, build: Path) -> None:
    import io
    import tarfile

    path = build / "evil-1.tar.gz"
    with tarfile.open(path, "w:gz") as archive:
        info = tarfile.TarInfo("../../escape")
        info.size = 1
        archive.addfile(info, io.BytesIO(b"x"))
    assert_one_line_error(run("push", str(path)), 2, "evil-1.tar.gz")


def test_push_refuses_the_link_name_as_an_explicit_version(run: Run, build: Path) -> None:
    path = make_asset(build, "api", "1")
    argv = ["push", str(path), "--name", "api", "--version", "current"]
    assert_one_line_error(run(*argv), 2, "version 'current' is reserved")
    assert run("assets", "--json").json() == []


def test_push_missing_file(run: Run) -> None:
    assert_one_line_error(run("push", "/nonexistent/a-1.tar.gz"), 2, "no such file")


def test_push_of_a_file_that_fails_to_read_is_one_line(run: Run, build: Path) -> None:
    """An I/O error part-way (here /proc/self/mem, which refuses reads at offset 0) is bad
    input like any other: exit 2, one line, nothing uploaded."""
    unreadable = build / "mem-1.tar.gz"
    unreadable.symlink_to("/proc/self/mem")
    assert_one_line_error(run("push", str(unreadable)), 2, f"cannot read {unreadable}")
    assert run("assets", "--json").json() == []


def test_a_push_that_fails_for_one_file_still_reports_the_others(
    run: Run, build: Path, tmp_path: Path
) -> None:
    """The store cannot take `zzz` (a directory is in its place): `aaa` is uploaded all the
    same, the JSON says so, the failure is one line naming the file, and no checksum file is
    left for an asset that was never stored."""
    first, second = make_asset(build, "aaa", "1"), make_asset(build, "zzz", "1")
    store = tmp_path / "data" / "store"
    (store / "zzz-1.tar.gz").mkdir(parents=True)
    result = run("push", "--force", "--json", str(first), str(second))
    assert result.code == 1
    rows = {row["name"]: row for row in result.json()}
    assert rows["aaa"]["status"] == "uploaded"
    assert rows["zzz"]["status"] == "failed"
    assert "Is a directory" in rows["zzz"]["error"]
    errors = [line for line in result.err.splitlines() if "note:" not in line]
    assert len(errors) == 1
    assert errors[0].startswith("daybook: zzz-1.tar.gz: cannot store zzz")
    assert sorted(path.name for path in store.iterdir()) == [
        "aaa-1.tar.gz",
        "aaa-1.tar.gz.meta.json",
        "zzz-1.tar.gz",
    ]


# -- pull --------------------------------------------------------------------------------------


def test_pull_installs_then_skips(run: Run, build: Path, tmp_path: Path) -> None:
    files = [make_asset(build, s, v) for s, v in [("api", "1"), ("api", "2"), ("web", "1")]]
    run("push", *map(str, files))
    run("map", "set", "web-prod-*", "api", "web", "nothing_yet")
    run("map", "set", "web-*", "other")
    first = run("pull", "--json")
    assert first.code == 0, first.err
    assert first.json() == {
        "host": "web-prod-1",
        "pattern": "web-prod-*",
        "ok": True,
        "services": {
            "api": {"installed": ["1", "2"], "present": [], "failed": {}},
            "web": {"installed": ["1"], "present": [], "failed": {}},
            "nothing_yet": {"installed": [], "present": [], "failed": {}},
        },
    }
    install = tmp_path / "data" / "install"
    assert (install / "api" / "2" / "conf" / "app.toml").read_text() == 'version = "2"\n'
    second = run("pull", "--json").json()
    assert second["services"]["api"] == {"installed": [], "present": ["1", "2"], "failed": {}}


def test_pull_dry_run_and_other_host(run: Run, build: Path, tmp_path: Path) -> None:
    run("push", str(make_asset(build, "db", "5")))
    run("map", "set", "db-*", "db")
    result = run("pull", "--host", "db-7", "--dry-run", "--json").json()
    assert result["services"]["db"]["installed"] == ["5"]
    assert not (tmp_path / "data" / "install" / "db").exists()
    other_dir = tmp_path / "elsewhere"
    assert run("pull", "--host", "db-7", "--install-dir", str(other_dir)).code == 0
    assert (other_dir / "db" / "5").is_dir()


def test_pull_with_no_matching_pattern(run: Run) -> None:
    result = run("pull", "--json")
    assert result.code == 0
    assert result.json() == {"host": "web-prod-1", "pattern": None, "ok": True, "services": {}}


def test_pull_reports_a_tampered_version_and_installs_the_rest(
    run: Run, build: Path, tmp_path: Path
) -> None:
    run("push", *[str(make_asset(build, "api", v)) for v in ("1", "2")])
    run("map", "set", "web-*", "api")
    stored = tmp_path / "data" / "store" / "api-1.tar.gz"
    data = bytearray(stored.read_bytes())
    data[-12] ^= 0xFF
    stored.write_bytes(bytes(data))
    result = run("pull", "--json")
    assert result.code == 1
    document = result.json()
    assert document["ok"] is False
    assert document["services"]["api"]["installed"] == ["2"]
    assert set(document["services"]["api"]["failed"]) == {"1"}
    assert not (tmp_path / "data" / "install" / "api" / "1").exists()


def test_a_file_where_a_service_dir_belongs_fails_that_service_only(
    run: Run, build: Path, tmp_path: Path
) -> None:
    run("push", *[str(make_asset(build, s, "1")) for s in ("api", "other")])
    run("map", "set", "web-*", "api", "other")
    install = tmp_path / "data" / "install"
    install.mkdir(parents=True)
    (install / "other").write_text("x\n")
    for dry_run in (["--dry-run"], []):
        result = run("pull", "--json", *dry_run)
        assert result.code == 1, result.err
        assert "Traceback" not in result.err
        services = result.json()["services"]
        assert services["api"]["installed"] == ["1"]
        assert "is not a directory" in services["other"]["error"]
    assert (install / "api" / "1").is_dir()
    human = run("pull")
    assert human.code == 1
    assert f"other: FAILED: {install / 'other'} is not a directory" in human.out


# -- unreachable backends and bad configuration ------------------------------------------------


def test_unreachable_consul_is_one_line(run: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    # Port 9 (discard) on loopback: nothing listens there on these machines.
    monkeypatch.setenv("DAYBOOK_REGISTRY", "consul://127.0.0.1:9")
    assert_one_line_error(run("map", "list"), 1, "127.0.0.1:9")


def test_unknown_store_scheme(run: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DAYBOOK_STORE", "ftp://x")
    assert_one_line_error(run("assets"), 2, "unsupported store URL")


@pytest.mark.parametrize(
    ("variable", "value", "fragment"),
    [
        ("DAYBOOK_REGISTRY", "consul://[::1", "registry URL 'consul://[::1' is malformed"),
        ("DAYBOOK_STORE", "s3://[x", "store URL 's3://[x' is malformed"),
        ("DAYBOOK_STORE", "s3://bu cket", "'bu cket' is not an S3 bucket name"),
        ("DAYBOOK_HOOK_TIMEOUT_S", "nan", "invalid value 'nan' for hook_timeout_s"),
        ("DAYBOOK_PORT", "65535", "port 65535: the results_port that follows from it"),
        ("DAYBOOK_REGISTRY", "consul://h:0", "registry URL 'consul://h:0': 0 is not a port"),
        ("DAYBOOK_MASTER", "a b", "master 'a b': 'a b' is not a host name or an IP address"),
        ("DAYBOOK_REGISTRY", "consul://h/team#1/", "a `#` would cut the key prefix short"),
        ("DAYBOOK_STORE", "s3://bucket1/a//b", "has an empty, `.` or `..` segment"),
    ],
)
def test_bad_settings_exit_2_with_one_line(
    run: Run, monkeypatch: pytest.MonkeyPatch, variable: str, value: str, fragment: str
) -> None:
    monkeypatch.setenv(variable, value)
    assert_one_line_error(run("assets"), 2, fragment)


def test_unreadable_config(run: Run, tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("[[[")
    assert_one_line_error(run("--config", str(config), "map", "list"), 2, "not valid TOML")


def test_a_config_file_that_is_not_utf8_is_one_line(run: Run, tmp_path: Path) -> None:
    config = tmp_path / "latin.toml"
    config.write_bytes(b"\xff\xfe\n")
    assert_one_line_error(run("--config", str(config), "assets"), 2, f"{config} is not UTF-8")


def test_config_flag_after_the_subcommand(run: Run, tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text(f'registry = "file://{tmp_path}/other.json"\n')
    run("map", "set", "--config", str(config), "x-*", "a")
    assert (tmp_path / "other.json").exists()


def test_a_store_that_cannot_list_is_a_line_on_stderr(
    run: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    in_the_way = tmp_path / "store-file"
    in_the_way.write_text("not a directory")
    monkeypatch.setenv("DAYBOOK_STORE", f"file://{in_the_way}")
    run("map", "set", "*", "web")
    result = run("pull", "--json")
    assert result.code == 1
    assert "cannot list" in result.json()["services"]["web"]["error"]
    (line,) = result.err.splitlines()
    assert line.startswith("daybook: WARNING: cannot install web: cannot list")


# -- every backend pairing ---------------------------------------------------------------------


@pytest.mark.parametrize("store_kind", ["file", "s3"])
@pytest.mark.parametrize("registry_kind", ["file", "consul"])
def test_push_map_pull_on_every_backend(
    run: Run,
    build: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
    store_kind: str,
    registry_kind: str,
) -> None:
    if store_kind == "s3":
        request.getfixturevalue("s3_env")
        bucket = request.getfixturevalue("s3_bucket")
        monkeypatch.setenv("DAYBOOK_STORE", f"s3://{bucket}/assets")
    if registry_kind == "consul":
        server = request.getfixturevalue("consul_server")
        monkeypatch.setenv("DAYBOOK_REGISTRY", f"consul://{server.address}")

    files = [
        make_asset(build, s, v) for s, v in [("svc_1", "1.0"), ("svc_1", "1.1"), ("svc_10", "9")]
    ]
    assert run("push", *map(str, files)).code == 0
    assert run("push", str(files[0])).code == 0  # identical: a no-op
    assert [a["version"] for a in run("assets", "svc_1", "--json").json()] == ["1.0", "1.1"]
    assert run("map", "set", "web-prod-*", "svc_1").code == 0
    assert run("map", "set", "web-*", "svc_10").code == 0
    assert run("map", "resolve", "web-prod-1", "--json").json()["services"] == ["svc_1"]

    first = run("pull", "--json")
    assert first.code == 0, first.err
    assert first.json()["services"] == {
        "svc_1": {"installed": ["1.0", "1.1"], "present": [], "failed": {}}
    }
    assert run("pull", "--json").json()["services"]["svc_1"]["present"] == ["1.0", "1.1"]
    install = tmp_path / "data" / "install"
    assert sorted(p.name for p in (install / "svc_1").iterdir()) == ["1.0", "1.1"]
    assert not (install / "svc_10").exists()


def test_missing_aws_credentials_is_one_line_exit_2(
    run: Run, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    request.getfixturevalue("s3_env")
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("DAYBOOK_STORE", "s3://some-bucket")
    assert_one_line_error(run("assets"), 2, "credentials")


def test_unreachable_s3_is_one_line_exit_1(
    run: Run, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    request.getfixturevalue("s3_env")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    monkeypatch.setenv("DAYBOOK_STORE", "s3://some-bucket")
    assert_one_line_error(run("assets"), 1, "cannot reach S3")


def test_a_malformed_s3_endpoint_is_one_line_exit_2(
    run: Run, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No scheme: obstore panicked (a Rust backtrace and a PanicException traceback)."""
    request.getfixturevalue("s3_env")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "127.0.0.1:8333")
    monkeypatch.setenv("DAYBOOK_STORE", "s3://some-bucket")
    assert_one_line_error(run("assets"), 2, "AWS_ENDPOINT_URL='127.0.0.1:8333' is not an http")


# -- start-up ----------------------------------------------------------------------------------

# What an operator's quick command must not load: only the fleet commands that talk to a
# master need zmq, only an S3 store needs boto3, and only `daybook master|minion` need the
# process packages (`daybook.cli.daemons` imports them inside its commands).
HEAVY_IMPORTS = ("zmq", "boto3", "botocore", "master", "minion")


@pytest.mark.parametrize(
    "argv", [["map", "resolve", "web-prod-1"], ["sync", "--help"]], ids=["map-resolve", "help"]
)
def test_quick_commands_do_not_import_the_heavy_packages(tmp_path: Path, argv: list[str]) -> None:
    code = (
        "import contextlib, sys\n"
        "from daybook.cli.main import main\n"
        "with contextlib.suppress(SystemExit):\n"
        "    main(sys.argv[1:])\n"
        f"heavy = {HEAVY_IMPORTS!r}\n"
        "loaded = sorted({name.partition('.')[0] for name in sys.modules} & set(heavy))\n"
        "print('loaded:', *loaded, file=sys.stderr)\n"
    )
    env = {**os.environ, "DAYBOOK_DATA_DIR": str(tmp_path), "DAYBOOK_HOSTNAME": "operator"}
    env.pop("DAYBOOK_CONFIG", None)
    done = subprocess.run(
        [sys.executable, "-c", code, *argv], env=env, capture_output=True, text=True, check=False
    )
    assert done.stderr.strip().splitlines()[-1] == "loaded:", done.stderr


# What `daybook pull` must not load: its fixed cost is paid on every deploy. The wire codecs
# (msgspec and every message type) serve only a failed hook's mark; the fleet's, rollouts',
# keys' and leadership types only other views and commands; subprocess only a hook; socket
# and uuid only names.
PULL_AVOIDS = (
    "daybook.wire",
    "msgspec",
    "daybook.model.fleet",
    "daybook.model.keys",
    "daybook.model.leadership",
    "daybook.model.rollout",
    "socket",
    "subprocess",
    "uuid",
)


def test_a_pull_loads_only_what_it_needs(run: Run, build: Path) -> None:
    run("push", str(make_asset(build, "api", "1")))
    run("map", "set", "web-prod-*", "api")
    code = (
        "import sys\n"
        "from daybook.cli.main import main\n"
        "code = main(sys.argv[1:])\n"
        f"avoided = {PULL_AVOIDS!r}\n"
        "print('loaded:', *sorted(set(sys.modules) & set(avoided)), file=sys.stderr)\n"
        "sys.exit(code)\n"
    )
    # The fixture's settings are in this process's environment, which the child inherits.
    done = subprocess.run(
        [sys.executable, "-c", code, "pull", "--json"], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["services"]["api"]["installed"] == ["1"]
    assert done.stderr.strip().splitlines()[-1] == "loaded:", done.stderr


@pytest.mark.parametrize(
    ("argv", "group"),
    [
        (["minion"], "daybook.cli.daemons"),
        (["--data-dir", "pin", "-v", "--port=4505", "minion"], "daybook.cli.daemons"),
        (["--config", "sync", "pin", "web", "1"], "daybook.cli.pins"),
        (["map", "resolve", "sync"], "daybook.cli.mappings"),
        (["--help"], None),
        (["bogus"], None),
        ([], None),
    ],
)
def test_a_command_line_builds_only_its_commands_group(argv: list[str], group: str | None) -> None:
    assert _group_of(argv) == group


def test_every_command_belongs_to_the_group_that_registers_it() -> None:
    whole = build_parser()
    commands = next(action.choices for action in whole._actions if isinstance(action.choices, dict))
    for name in commands:
        group = _group_of([name])
        assert group is not None, name
        alone = build_parser(group)
        assert alone.parse_args([name, *_minimal_args(name)]).handler is not None


def _minimal_args(command: str) -> list[str]:
    return {
        "push": ["x-1.tar.gz"],
        "assets": ["list"],
        "map": ["list"],
        "pin": ["web", "1"],
        "unpin": ["web"],
        "rollback": ["web"],
        "keys": ["list"],
    }.get(command, [])


def test_starting_a_minion_leaves_the_other_commands_unloaded(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from daybook.cli.main import build_parser, _group_of\n"
        "build_parser(_group_of(['minion'])).parse_args(['minion'])\n"
        "print(*sorted(m for m in sys.modules if m.startswith('daybook.cli.')))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["daybook.cli.daemons", "daybook.cli.main"]


def test_only_the_daemons_module_reaches_up_into_master_and_minion() -> None:
    package = Path(__file__).parent.parent / "daybook"
    importers = set()
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            if any(name.partition(".")[0] in ("master", "minion") for name in names):
                importers.add(path.relative_to(package).as_posix())
    assert importers == {"cli/daemons.py"}
