"""Settings: file < environment < flags, ports derived from the publish port, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from daybook.config import load_settings
from daybook.errors import ConfigError
from daybook.urls import file_url_path


def test_embedded_defaults_live_under_the_data_dir(tmp_path: Path) -> None:
    settings = load_settings(env={"DAYBOOK_DATA_DIR": str(tmp_path)})
    assert settings.store == f"file://{tmp_path}/store"
    assert settings.registry == f"file://{tmp_path}/mappings.json"
    assert settings.install_dir == tmp_path / "install"
    assert (settings.port, settings.results_port, settings.control_port, settings.http_port) == (
        4505,
        4506,
        4507,
        4508,
    )


@pytest.mark.parametrize("name", ["h#sh", "q?x", "sp ace", "pct%41"])
def test_embedded_urls_name_exactly_the_data_dir(tmp_path: Path, name: str) -> None:
    # Joined as text, `file://.../h#sh/store` read back as `.../h`: state went elsewhere.
    data_dir = tmp_path / name
    settings = load_settings(env={"DAYBOOK_DATA_DIR": str(data_dir)})
    assert file_url_path(settings.store, "store") == data_dir / "store"
    assert file_url_path(settings.registry, "registry") == data_dir / "mappings.json"


def test_relative_paths_are_made_absolute_when_the_settings_load(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    env = {
        "DAYBOOK_DATA_DIR": "reldata",
        "DAYBOOK_INSTALL_DIR": "apps",
        "DAYBOOK_HOOKS_DIR": "relhooks",
    }
    settings = load_settings(env=env)
    assert settings.data_dir == tmp_path / "reldata"
    assert settings.store == (tmp_path / "reldata" / "store").as_uri()
    assert settings.install_dir == tmp_path / "apps"
    assert settings.hooks_path == tmp_path / "relhooks"


def test_file_then_env_then_flags(tmp_path: Path) -> None:
    config = tmp_path / "daybook.toml"
    config.write_text(
        'store = "s3://from-file"\nregistry = "consul://file:8500"\nmaster = "m1"\n'
        "control_port = 9999\n"
    )
    settings = load_settings(
        config_path=str(config),
        env={
            "DAYBOOK_DATA_DIR": str(tmp_path),
            "DAYBOOK_STORE": "s3://from-env",
            "DAYBOOK_PORT": "6000",
        },
        overrides={"store": "s3://from-flag", "master": None},
    )
    assert settings.store == "s3://from-flag"
    assert settings.registry == "consul://file:8500"
    assert settings.master == "m1"
    # The publish port moves results and HTTP along, but a port set in the file stays.
    assert (settings.port, settings.results_port, settings.control_port, settings.http_port) == (
        6000,
        6001,
        9999,
        6003,
    )


def test_config_found_through_daybook_config(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('hostname = "web-1"\n')
    settings = load_settings(env={"DAYBOOK_CONFIG": str(config), "DAYBOOK_DATA_DIR": str(tmp_path)})
    assert settings.hostname == "web-1"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("store = ", "not valid TOML"),
        ('colour = "blue"\n', "unknown setting"),
        ('port = "many"\n', "invalid value 'many' for port"),
        ("port = 70000\n", "invalid value 70000 for port"),
        ('hostname = "bad_host!"\n', "invalid host name"),
        ("auto_accept = 3\n", "invalid value 3 for auto_accept"),
        ('hostname = ""\n', "invalid host name ''"),
        ('install_dir = ""\n', "invalid value '' for install_dir"),
        ('masters = "x"\n', "unknown setting.* masters .several masters go in `master`"),
        ('master = ["m1", "m2"]\n', "invalid value .* for master"),
    ],
)
def test_bad_config_files_give_one_clear_error(tmp_path: Path, content: str, message: str) -> None:
    config = tmp_path / "daybook.toml"
    config.write_text(content)
    with pytest.raises(ConfigError, match=message):
        load_settings(config_path=str(config), env={"DAYBOOK_DATA_DIR": str(tmp_path)})


def test_a_config_file_that_is_not_utf8_names_the_file(tmp_path: Path) -> None:
    config = tmp_path / "latin.toml"
    config.write_bytes(b"\xff\xfe\n")
    with pytest.raises(ConfigError, match=f"config file {config} is not UTF-8") as caught:
        load_settings(config_path=str(config), env={"DAYBOOK_DATA_DIR": str(tmp_path)})
    assert "\n" not in str(caught.value)


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(config_path=str(tmp_path / "nope.toml"), env={})


def test_an_empty_variable_counts_as_unset(tmp_path: Path) -> None:
    config = tmp_path / "daybook.toml"
    config.write_text('hostname = "web-1"\nmaster = "m1"\n')
    env = {"DAYBOOK_DATA_DIR": str(tmp_path), "DAYBOOK_CONFIG": str(config)}
    env |= {"DAYBOOK_INSTALL_DIR": "", "DAYBOOK_HOSTNAME": "", "DAYBOOK_MASTER": ""}
    settings = load_settings(env=env)
    # DAYBOOK_INSTALL_DIR= installed into the current directory.
    assert settings.install_dir == tmp_path / "install"
    assert (settings.hostname, settings.master) == ("web-1", "m1")


@pytest.mark.parametrize("setting", ["hostname", "install_dir", "store", "master"])
def test_an_empty_flag_value_is_refused(tmp_path: Path, setting: str) -> None:
    flag = "--" + setting.replace("_", "-")
    with pytest.raises(ConfigError, match=f"{flag}: an empty value"):
        load_settings(env={"DAYBOOK_DATA_DIR": str(tmp_path)}, overrides={setting: ""})
    with pytest.raises(ConfigError, match="--config: an empty path"):
        load_settings(config_path="", env={"DAYBOOK_DATA_DIR": str(tmp_path)})


def test_auto_accept_from_env(tmp_path: Path) -> None:
    env = {"DAYBOOK_DATA_DIR": str(tmp_path), "DAYBOOK_AUTO_ACCEPT": "1"}
    assert load_settings(env=env).auto_accept is True


def test_the_example_config_lists_valid_settings() -> None:
    example = Path(__file__).parent.parent / "deploy" / "daybook.example.toml"
    settings = load_settings(config_path=str(example), env={})
    assert settings.store == "s3://my-assets-bucket/daybook"
    assert settings.control_port == 4507


@pytest.mark.parametrize(
    ("variable", "value", "setting", "expected"),
    [
        ("DAYBOOK_STORE", "s3://bucket/prefix", "store", "s3://bucket/prefix"),
        ("DAYBOOK_REGISTRY", "consul://c:8500", "registry", "consul://c:8500"),
        ("DAYBOOK_INSTALL_DIR", "/srv/apps", "install_dir", Path("/srv/apps")),
        ("DAYBOOK_HOSTNAME", "web-1", "hostname", "web-1"),
        ("DAYBOOK_MASTER", "m1", "master", "m1"),
        ("DAYBOOK_PORT", "0", "http_port", 0),
        ("DAYBOOK_KEY_PORT", "65535", "key_port", 65535),
        ("DAYBOOK_AUTO_ACCEPT", " Yes ", "auto_accept", True),
        ("DAYBOOK_INSECURE_TRANSPORT", "off", "insecure_transport", False),
        ("DAYBOOK_MASTER_KEY", "", "master_key", None),
        ("DAYBOOK_SYNC_DEADLINE_S", "90", "sync_deadline_s", 90.0),
        ("DAYBOOK_MAX_HEARTBEATS_PER_S", "0", "max_heartbeats_per_s", 0.0),
    ],
)
def test_each_variable_sets_its_setting(
    tmp_path: Path, variable: str, value: str, setting: str, expected: object
) -> None:
    settings = load_settings(env={"DAYBOOK_DATA_DIR": str(tmp_path), variable: value})
    assert getattr(settings, setting) == expected


@pytest.mark.parametrize(
    "content",
    [
        "splay_s = -1\n",
        "down_after_s = true\n",
        "max_parallel_downloads = 0\n",
        "results_port = -1\n",
        "http_port = 65536\n",
        "bind = 0\n",
        "sync_deadline_s = 0.5\n",
        "max_heartbeats_per_s = -1\n",
        "hook_timeout_s = nan\n",
        "sync_deadline_s = inf\n",
        "splay_s = -inf\n",
    ],
)
def test_values_outside_a_settings_type_or_bounds_are_refused(tmp_path: Path, content: str) -> None:
    config = tmp_path / "daybook.toml"
    config.write_text(content)
    name = content.partition(" = ")[0]
    with pytest.raises(ConfigError, match=f"invalid value .* for {name}"):
        load_settings(config_path=str(config), env={"DAYBOOK_DATA_DIR": str(tmp_path)})


@pytest.mark.parametrize(
    ("variable", "url"),
    [
        ("DAYBOOK_REGISTRY", "consul://[::1"),
        ("DAYBOOK_REGISTRY", "consul://c:99999"),
        ("DAYBOOK_REGISTRY", "file://[x"),
        ("DAYBOOK_STORE", "s3://[x"),
        ("DAYBOOK_STORE", "file://[x"),
    ],
)
def test_a_malformed_store_or_registry_url_is_one_clear_line(
    tmp_path: Path, variable: str, url: str
) -> None:
    with pytest.raises(ConfigError, match=r"URL .* is malformed") as caught:
        load_settings(env={"DAYBOOK_DATA_DIR": str(tmp_path), variable: url})
    assert "\n" not in str(caught.value)


def test_an_s3_bucket_name_is_checked_when_the_settings_load(tmp_path: Path) -> None:
    # Before any S3 client sees it: obstore panicked on the space, botocore refused it late.
    env = {"DAYBOOK_DATA_DIR": str(tmp_path), "DAYBOOK_STORE": "s3://bu cket"}
    with pytest.raises(ConfigError, match="'bu cket' is not an S3 bucket name"):
        load_settings(env=env)


@pytest.mark.parametrize("value", ["nan", "NaN", "inf", "-inf", "Infinity", "1e999"])
@pytest.mark.parametrize("variable", ["DAYBOOK_HOOK_TIMEOUT_S", "DAYBOOK_SYNC_DEADLINE_S"])
def test_float_settings_refuse_nan_and_infinity(tmp_path: Path, variable: str, value: str) -> None:
    with pytest.raises(ConfigError, match=f"{variable}: invalid value"):
        load_settings(env={"DAYBOOK_DATA_DIR": str(tmp_path), variable: value})


def test_settings_without_a_variable_come_from_the_file_only(tmp_path: Path) -> None:
    config = tmp_path / "daybook.toml"
    config.write_text("splay_s = 0.25\nmax_parallel_downloads = 4\n")
    env = {"DAYBOOK_DATA_DIR": str(tmp_path), "DAYBOOK_SPLAY_S": "9"}
    settings = load_settings(config_path=str(config), env=env)
    assert (settings.splay_s, settings.max_parallel_downloads) == (0.25, 4)


@pytest.mark.parametrize(
    ("given", "host", "port", "control_port"),
    [
        ("m1", "m1", 4505, 4507),
        ("m1:5505", "m1", 5505, 5507),
        ("10.0.0.7:6000", "10.0.0.7", 6000, 6002),
        ("[::1]:5505", "[::1]", 5505, 5507),
        ("::1", "::1", 4505, 4507),
        ("m1.example.com.:5505", "m1.example.com.", 5505, 5507),
    ],
)
def test_a_port_given_with_the_master_overrides_port(
    given: str, host: str, port: int, control_port: int
) -> None:
    settings = load_settings(env={"DAYBOOK_MASTER": given, "DAYBOOK_DATA_DIR": "/tmp/d"})
    assert (settings.master, settings.port, settings.control_port) == (host, port, control_port)


@pytest.mark.parametrize(
    ("given", "fragment"),
    [
        ("m1:4505,m1:4505", "names one master twice"),
        ("m1,,m2", "an empty entry"),
        ("m1:http", "is not a port"),
        ("m1:70000", "is not a port"),
        (":4505", "names no host"),
        ("a b", "'a b' is not a host name or an IP address"),
        ("m1, a b:4505", "'a b' is not a host name"),
        ("m1/x", "'m1/x' is not a host name"),
        ("[10.0.0.1]:4505", "'.10.0.0.1.' is not a host name"),
        ("x:y:z", "is not a host name"),
    ],
)
def test_a_bad_or_several_masters_is_one_clear_line(given: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment) as caught:
        load_settings(env={"DAYBOOK_MASTER": given, "DAYBOOK_DATA_DIR": "/tmp/d"})
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"DAYBOOK_PORT": "65535"}, "port 65535: the results_port that follows from it, 65536"),
        ({"DAYBOOK_PORT": "65532"}, "port 65532: the key_port that follows from it, 65536"),
        ({"DAYBOOK_MASTER": "m1:65535"}, "port 65535: the results_port"),
        ({"DAYBOOK_MASTER": "m1,m2:65534"}, "master m2:65534: the control_port"),
    ],
)
def test_ports_that_follow_the_publish_port_must_be_ports(
    env: dict[str, str], fragment: str
) -> None:
    with pytest.raises(ConfigError, match=fragment):
        load_settings(env={**env, "DAYBOOK_DATA_DIR": "/tmp/d"})


def test_a_publish_port_near_the_end_with_its_other_ports_set() -> None:
    env = {"DAYBOOK_PORT": "65535", "DAYBOOK_DATA_DIR": "/tmp/d"}
    env |= {f"DAYBOOK_{role}_PORT": "0" for role in ("RESULTS", "CONTROL", "HTTP", "KEY")}
    assert load_settings(env=env).port == 65535


@pytest.mark.parametrize(
    ("variable", "value", "fragment"),
    [
        ("DAYBOOK_REGISTRY", "consul://h:0", "registry URL 'consul://h:0': 0 is not a port"),
        ("DAYBOOK_REGISTRY", "consul+https://h:0/x", "0 is not a port"),
        ("DAYBOOK_ADVERTISE", "m1:0", "advertise 'm1:0': '0' is not a port"),
        ("DAYBOOK_ADVERTISE", "m1:http", "advertise 'm1:http': 'http' is not a port"),
    ],
)
def test_port_0_is_refused_where_it_cannot_mean_any_port(
    variable: str, value: str, fragment: str
) -> None:
    with pytest.raises(ConfigError, match=fragment):
        load_settings(env={variable: value, "DAYBOOK_DATA_DIR": "/tmp/d"})


def test_several_masters_each_with_its_own_publish_port() -> None:
    settings = load_settings(
        env={"DAYBOOK_MASTER": "m1:5505, m2, [fd00::2]:6505", "DAYBOOK_DATA_DIR": "/tmp/d"}
    )
    assert [m.address for m in settings.masters] == ["m1:5505", "m2:4505", "[fd00::2]:6505"]
    assert (settings.master, settings.port) == ("m1", 5505)
    second = settings.masters[1]
    assert settings.endpoint_of(second, settings.control_port) == "tcp://m2:4507"
    assert load_settings(env={"DAYBOOK_DATA_DIR": "/tmp/d"}).masters[0].address == (
        "127.0.0.1:4505"
    )
