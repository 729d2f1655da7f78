"""Settings: the config file, then DAYBOOK_* variables, then flags, validated once."""

from __future__ import annotations

import os
import socket
import stat
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from daybook.errors import ConfigError
from daybook.model.patterns import check_host
from daybook.registry.base import DEFAULT_KEY_PREFIX

SYSTEM_CONFIG = Path("/etc/daybook/daybook.toml")
DEFAULT_PORT = 4505


@dataclass(frozen=True)
class Settings:
    """Every setting, declared once with its default. Built only by `load_settings`."""

    data_dir: Path
    store: str
    registry: str
    install_dir: Path
    hostname: str
    consul_key_prefix: str = DEFAULT_KEY_PREFIX
    master: str = "127.0.0.1"
    # The publish port; results, control and HTTP default to the next three.
    port: int = DEFAULT_PORT
    results_port: int = DEFAULT_PORT + 1
    control_port: int = DEFAULT_PORT + 2
    http_port: int = DEFAULT_PORT + 3
    # The master serves its public key here, in plaintext, for minions' first contact.
    key_port: int = DEFAULT_PORT + 4
    # The master binds its ZeroMQ sockets here; the HTTP API stays on loopback by default.
    bind: str = "0.0.0.0"
    http_bind: str = "127.0.0.1"
    auto_accept: bool = False
    # The master's public key (Z85), pinned by minions and operators; else learnt on first
    # contact through the key port and pinned in the data dir.
    master_key: str | None = None
    # Benchmarks only: no encryption and no key authentication between master and minions.
    insecure_transport: bool = False
    # Master: how often to list the store and to republish the desired state. Each listing
    # costs the master a few ms of CPU; an operator's `sync` lists the store first anyway,
    # so `push` then `sync` never waits for the poll.
    store_poll_interval_s: float = 5.0
    republish_interval_s: float = 30.0
    registry_poll_interval_s: float = 2.0
    # Minion: heartbeats, the random delay before downloads, and parallel downloads.
    heartbeat_interval_s: float = 5.0
    splay_s: float = 1.0
    max_parallel_downloads: int = 2
    # A minion is shown down after this long without a heartbeat.
    down_after_s: float = 15.0

    def endpoint(self, port: int, host: str | None = None) -> str:
        return f"tcp://{host or self.master}:{port}"


# Settings a config file may hold, with the env variable for each (if any).
_ENV_NAMES: dict[str, str] = {
    "store": "DAYBOOK_STORE",
    "registry": "DAYBOOK_REGISTRY",
    "install_dir": "DAYBOOK_INSTALL_DIR",
    "hostname": "DAYBOOK_HOSTNAME",
    "data_dir": "DAYBOOK_DATA_DIR",
    "master": "DAYBOOK_MASTER",
    "port": "DAYBOOK_PORT",
    # Beyond the contract: each port on its own, for ephemeral-port test fleets and odd firewalls.
    "results_port": "DAYBOOK_RESULTS_PORT",
    "control_port": "DAYBOOK_CONTROL_PORT",
    "http_port": "DAYBOOK_HTTP_PORT",
    "auto_accept": "DAYBOOK_AUTO_ACCEPT",
    "key_port": "DAYBOOK_KEY_PORT",
    "master_key": "DAYBOOK_MASTER_KEY",
    "insecure_transport": "DAYBOOK_INSECURE_TRANSPORT",
}
_FIELD_TYPES: dict[str, Any] = {f.name: f.type for f in fields(Settings)}
# Ports the publish port shifts when only it is set (by env or flag).
_DERIVED_PORTS = {"results_port": 1, "control_port": 2, "http_port": 3, "key_port": 4}


def default_data_dir() -> Path:
    """Root keeps node state in /var/lib like other daemons; users get their own data dir."""
    if os.geteuid() == 0:
        return Path("/var/lib/daybook")
    from platformdirs import user_data_dir

    return Path(user_data_dir("daybook"))


def find_config_file(explicit: str | None, env: Mapping[str, str]) -> Path | None:
    if explicit:
        return Path(explicit)
    if env.get("DAYBOOK_CONFIG"):
        return Path(env["DAYBOOK_CONFIG"])
    return SYSTEM_CONFIG if SYSTEM_CONFIG.exists() else None


def read_config_file(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except PermissionError:
        raise ConfigError(f"config file {path} is not readable (permission denied)") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    unknown = sorted(set(data) - set(_FIELD_TYPES))
    if unknown:
        raise ConfigError(f"config file {path}: unknown setting(s) {', '.join(unknown)}")
    _check_config_permissions(path)
    return data


def _check_config_permissions(path: Path) -> None:
    """Refuse a config file that other users may change: whoever edits it chooses the store,
    the registry and the master key this node trusts, and so what code it runs."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return
    if mode & 0o002:
        raise ConfigError(
            f"config file {path} is writable by every user (mode {mode:o}); anyone could "
            f"point this node at their own store or master: run `chmod o-w {path}`"
        )


def _check_no_credentials(name: str, url: str) -> None:
    """Credentials never go in URLs: they would be logged with them and sit in config files."""
    if urlsplit(url).password is not None:
        hint = "CONSUL_HTTP_TOKEN" if name == "registry" else "the AWS credential chain"
        raise ConfigError(
            f"{name}: the URL carries a password; put credentials in {hint} instead, "
            "never in the URL"
        )


def _coerce(name: str, value: object, source: str) -> object:
    kind = _FIELD_TYPES[name]
    try:
        if kind == "bool":
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(value)
        if kind == "int":
            if isinstance(value, bool):
                raise ValueError(value)
            number = int(str(value))
            if name.endswith("port") and not 0 <= number <= 65535:
                raise ValueError(value)
            if name == "max_parallel_downloads" and number < 1:
                raise ValueError(value)
            return number
        if kind == "float":
            if isinstance(value, bool):
                raise ValueError(value)
            seconds = float(str(value))
            if seconds < 0:
                raise ValueError(value)
            return seconds
        if kind == "Path":
            return Path(str(value)).expanduser()
        if not isinstance(value, str):
            raise ValueError(value)
        return value
    except ValueError:
        raise ConfigError(f"{source}: invalid value {value!r} for {name}") from None


def load_settings(
    *,
    config_path: str | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, object] | None = None,
) -> Settings:
    """Merge file < environment < flags (`overrides`, None values ignored) into Settings."""
    env = os.environ if env is None else env
    values: dict[str, object] = {}
    config_file = find_config_file(config_path, env)
    if config_file is not None:
        for name, value in read_config_file(config_file).items():
            values[name] = _coerce(name, value, str(config_file))
    for name, var in _ENV_NAMES.items():
        if var in env:
            values[name] = _coerce(name, env[var], var)
    for name, value in (overrides or {}).items():
        if value is not None:
            values[name] = _coerce(name, value, f"--{name.replace('_', '-')}")
    port = values.setdefault("port", DEFAULT_PORT)
    assert isinstance(port, int)
    for name, offset in _DERIVED_PORTS.items():
        # Port 0 asks the OS for free ports, for every socket alike.
        values.setdefault(name, port + offset if port else 0)

    data_dir = values.get("data_dir")
    if not isinstance(data_dir, Path):
        data_dir = default_data_dir()
    values["data_dir"] = data_dir
    values.setdefault("store", f"file://{data_dir / 'store'}")
    values.setdefault("registry", f"file://{data_dir / 'mappings.json'}")
    values.setdefault("install_dir", data_dir / "install")
    hostname = values.get("hostname") or socket.gethostname()
    assert isinstance(hostname, str)
    try:
        values["hostname"] = check_host(hostname)
    except Exception as exc:
        raise ConfigError(f"hostname: {exc}") from None
    for name in ("store", "registry"):
        url = values[name]
        assert isinstance(url, str)
        _check_no_credentials(name, url)
    master_key = values.get("master_key")
    if master_key == "":
        values["master_key"] = None
    elif isinstance(master_key, str):
        from daybook.model.keys import is_public_key

        if not is_public_key(master_key.strip()):
            raise ConfigError(
                "master_key: not a CURVE public key (40 characters of Z85, as printed by "
                "`daybook keys fingerprint` on the master)"
            )
        values["master_key"] = master_key.strip()
    return Settings(**values)  # type: ignore[arg-type]
