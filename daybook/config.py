"""Settings: the config file, then DAYBOOK_* variables, then flags, validated once."""

from __future__ import annotations

import math
import os
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, NamedTuple

from daybook.errors import ConfigError
from daybook.model.names import is_valid_service
from daybook.model.patterns import check_host, is_valid_host
from daybook.registry.base import DEFAULT_KEY_PREFIX
from daybook.urls import file_url_path, s3_bucket_and_prefix, split_url

if TYPE_CHECKING:
    from urllib.parse import SplitResult

    from daybook.model.releases import ReleasePolicy

SYSTEM_CONFIG = Path("/etc/daybook/daybook.toml")
DEFAULT_PORT = 4505
DEFAULT_MASTER = "127.0.0.1"


@dataclass(frozen=True)
class MasterAddress:
    """One master as minions and operators reach it: its host and its publish port (its
    other ports sit at the same offsets from it as this node's own do from `port`)."""

    host: str
    port: int

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


class _Rule(NamedTuple):
    """How a setting is read: its environment variable, if any, and the bounds of a number."""

    env: str | None = None
    low: float | None = None
    high: float | None = None


# The key of a setting's rule in its dataclass field's metadata.
_RULE = "daybook.config"


def _rule(
    env: str | None = None, *, low: float | None = None, high: float | None = None
) -> Mapping[str, _Rule]:
    """A setting's rule, as the metadata of its dataclass field."""
    return MappingProxyType({_RULE: _Rule(env, low, high)})


def _port_rule(env: str) -> Mapping[str, _Rule]:
    return _rule(env, low=0, high=65535)


# Every duration is in seconds, and none is negative.
_SECONDS = _rule(low=0)


@dataclass(frozen=True)
class ServiceOverride:
    """A `[services.NAME]` table of the config file: the release settings one service has
    of its own (None: the global setting)."""

    keep_versions: int | None = None
    activate: bool | None = None


# The settings a `[services.NAME]` table may override.
_SERVICE_SETTINGS = tuple(f.name for f in fields(ServiceOverride))


@dataclass(frozen=True)
class Settings:
    """Every setting, declared once with its default, its type, its environment variable and
    its bounds. A config file may set any of them. Built only by `load_settings`.

    The first five have no fixed default: the data dir is per user (see `default_data_dir`),
    the store, registry and install dir live under it, and the hostname is the OS's.
    """

    data_dir: Path = field(metadata=_rule("DAYBOOK_DATA_DIR"))
    store: str = field(metadata=_rule("DAYBOOK_STORE"))
    registry: str = field(metadata=_rule("DAYBOOK_REGISTRY"))
    install_dir: Path = field(metadata=_rule("DAYBOOK_INSTALL_DIR"))
    hostname: str = field(metadata=_rule("DAYBOOK_HOSTNAME"))
    consul_key_prefix: str = DEFAULT_KEY_PREFIX
    # The first (or only) master's host; `masters` holds every master given.
    master: str = field(default=DEFAULT_MASTER, metadata=_rule("DAYBOOK_MASTER"))
    # The publish port; results, control and HTTP default to the next three. Each port has
    # its own variable beyond the contract, for ephemeral-port test fleets and odd firewalls.
    port: int = field(default=DEFAULT_PORT, metadata=_port_rule("DAYBOOK_PORT"))
    results_port: int = field(default=DEFAULT_PORT + 1, metadata=_port_rule("DAYBOOK_RESULTS_PORT"))
    control_port: int = field(default=DEFAULT_PORT + 2, metadata=_port_rule("DAYBOOK_CONTROL_PORT"))
    http_port: int = field(default=DEFAULT_PORT + 3, metadata=_port_rule("DAYBOOK_HTTP_PORT"))
    # The master serves its public key here, in plaintext, for minions' first contact.
    key_port: int = field(default=DEFAULT_PORT + 4, metadata=_port_rule("DAYBOOK_KEY_PORT"))
    # The master binds its ZeroMQ sockets here; the HTTP API stays on loopback by default.
    bind: str = "0.0.0.0"
    http_bind: str = "127.0.0.1"
    auto_accept: bool = field(default=False, metadata=_rule("DAYBOOK_AUTO_ACCEPT"))
    # The master's public key (Z85), pinned by minions and operators; else learnt on first
    # contact through the key port and pinned in the data dir.
    master_key: str | None = field(default=None, metadata=_rule("DAYBOOK_MASTER_KEY"))
    # Master: the key pair file (a ZeroMQ secret certificate, mode 0600) every master of
    # one fleet shares, so minions pin one key whichever master they meet; None uses this
    # master's own `<data dir>/keys/master.key_secret`, created on first start.
    master_key_file: Path | None = field(default=None, metadata=_rule("DAYBOOK_MASTER_KEY_FILE"))
    # Benchmarks only: no encryption and no key authentication between master and minions.
    insecure_transport: bool = field(default=False, metadata=_rule("DAYBOOK_INSECURE_TRANSPORT"))
    # Master: how often to list the store and to republish the desired state. Each listing
    # costs the master a few ms of CPU; an operator's `sync` lists the store first anyway,
    # so `push` then `sync` never waits for the poll.
    store_poll_interval_s: float = field(default=5.0, metadata=_SECONDS)
    republish_interval_s: float = field(default=30.0, metadata=_SECONDS)
    registry_poll_interval_s: float = field(default=2.0, metadata=_SECONDS)
    # Master: an automatic sync stops waiting for answers this long after it was issued (an
    # operator's sync, after its --timeout), and ends incomplete naming the silent hosts.
    # A little over a republish, which gives every live minion a second chance to hear it.
    sync_deadline_s: float = field(default=40.0, metadata=_rule("DAYBOOK_SYNC_DEADLINE_S", low=1))
    # Minion: heartbeats, the random delay before downloads, and parallel downloads.
    heartbeat_interval_s: float = field(default=5.0, metadata=_SECONDS)
    splay_s: float = field(default=1.0, metadata=_SECONDS)
    # Master: how many hosts may start downloading each second after an event. The event
    # asks the hosts it reaches to spread their starts over hosts / rate seconds (each
    # minion capped by its splay_s): a handful of hosts starts at once, a large fleet is
    # spread over the whole splay as before.
    download_starts_per_s: float = field(
        default=100.0, metadata=_rule("DAYBOOK_DOWNLOAD_STARTS_PER_S", low=1)
    )
    max_parallel_downloads: int = field(default=2, metadata=_rule(low=1))
    # Master, with an S3 store: how long the download URLs it signs for minions stay valid.
    # Minions hold no store credentials; a URL is asked for just before its download.
    download_url_expiry_s: float = field(
        default=300.0, metadata=_rule("DAYBOOK_DOWNLOAD_URL_EXPIRY_S", low=1, high=7 * 24 * 3600)
    )
    # Minion, with an S3 store: download through the URLs the master signs (no credentials
    # on the minion); false reads the bucket with the minion's own AWS credentials.
    signed_downloads: bool = field(default=True, metadata=_rule("DAYBOOK_SIGNED_DOWNLOADS"))
    # A minion is shown down after this long without a heartbeat.
    down_after_s: float = field(default=15.0, metadata=_SECONDS)
    # Master: at most this many heartbeats a second from the whole fleet. A larger fleet is
    # asked (in every event) to heartbeat every known minions / this seconds, and
    # down_after_s grows with it; 0 keeps every fleet at heartbeat_interval_s.
    max_heartbeats_per_s: float = field(
        default=500.0, metadata=_rule("DAYBOOK_MAX_HEARTBEATS_PER_S", low=0)
    )
    # The release lifecycle on a host (pull and minion), off unless set: keep the newest N
    # versions of each service (0 keeps all), maintain `<install_dir>/<service>/current`,
    # run `<hooks_dir>/<service>` after `current` moved. Per-service overrides of the first
    # two live in the config file's `[services.NAME]` tables.
    keep_versions: int = field(default=0, metadata=_rule("DAYBOOK_KEEP_VERSIONS", low=0))
    activate: bool = field(default=False, metadata=_rule("DAYBOOK_ACTIVATE"))
    # Default: `hooks` beside the config file in use (/etc/daybook/hooks), else in the data
    # dir (filled in by load_settings).
    hooks_dir: Path | None = field(default=None, metadata=_rule("DAYBOOK_HOOKS_DIR"))
    hook_timeout_s: float = field(
        default=60.0, metadata=_rule("DAYBOOK_HOOK_TIMEOUT_S", low=0.1, high=24 * 3600)
    )
    revert_on_hook_failure: bool = field(
        default=False, metadata=_rule("DAYBOOK_REVERT_ON_HOOK_FAILURE")
    )
    services: Mapping[str, ServiceOverride] = field(default_factory=lambda: MappingProxyType({}))
    # Every master given in `master`, in order (filled in by load_settings); one by default.
    masters: tuple[MasterAddress, ...] = ()
    # Master: the address this master is reached at by minions and operators, as it goes
    # into the leader lock (HOST:PUBLISH_PORT); None: this host's name and `port`.
    advertise: str | None = field(default=None, metadata=_rule("DAYBOOK_ADVERTISE"))

    def endpoint(self, port: int, host: str | None = None) -> str:
        return f"tcp://{host or self.master}:{port}"

    def endpoint_of(self, master: MasterAddress, own_port: int) -> str:
        """`master`'s endpoint for the role this node reaches at `own_port` on the first
        master (`results_port`, `control_port`...): the same offset from its publish port."""
        return f"tcp://{master.host}:{master.port + own_port - self.port}"

    @property
    def advertised_address(self) -> str:
        """A master's own address in the leader lock, which minions and operators match
        against their `master` list."""
        if self.advertise and _has_port(self.advertise):
            return self.advertise
        return f"{self.advertise or self.hostname}:{self.port}"

    def release_policy(self, service: str) -> ReleasePolicy:
        """How this host keeps `service`'s versions: its own overrides, else the globals."""
        from daybook.model.releases import ReleasePolicy  # only where the lifecycle runs

        override = self.services.get(service, ServiceOverride())
        return ReleasePolicy(
            keep_versions=self.keep_versions
            if override.keep_versions is None
            else override.keep_versions,
            activate=self.activate if override.activate is None else override.activate,
        )

    @property
    def release_lifecycle_on(self) -> bool:
        """True when any service has retention or the `current` link switched on."""
        overrides = self.services.values()
        return (
            self.keep_versions > 0
            or self.activate
            or any(o.keep_versions or o.activate for o in overrides)
        )

    @property
    def hooks_path(self) -> Path:
        return self.hooks_dir if self.hooks_dir is not None else self.data_dir / "hooks"


# Each setting's type (as annotated: a string) and rule, by name.
_TYPES: dict[str, str] = {f.name: str(f.type) for f in fields(Settings)}
_RULES: dict[str, _Rule] = {f.name: f.metadata.get(_RULE, _Rule()) for f in fields(Settings)}
# Filled in by load_settings, never given: the file names them only by mistake.
_DERIVED_SETTINGS = {"masters": "several masters go in `master`, comma-separated"}
# Ports the publish port shifts when only it is set (by env or flag).
_DERIVED_PORTS = {"results_port": 1, "control_port": 2, "http_port": 3, "key_port": 4}


def default_data_dir() -> Path:
    """Root keeps node state in /var/lib like other daemons; users get their own data dir."""
    if os.geteuid() == 0:
        return Path("/var/lib/daybook")
    from platformdirs import user_data_dir

    return Path(user_data_dir("daybook"))


def find_config_file(explicit: str | None, env: Mapping[str, str]) -> Path | None:
    if explicit == "":
        raise ConfigError("--config: an empty path")
    if explicit is not None:
        return Path(explicit)
    if env.get("DAYBOOK_CONFIG"):
        return Path(env["DAYBOOK_CONFIG"])
    return SYSTEM_CONFIG if SYSTEM_CONFIG.exists() else None


def read_config_file(path: Path) -> dict[str, Any]:
    import tomllib  # only when there is a file: not for `--help`, nor on the embedded defaults

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
    except UnicodeDecodeError as exc:
        # TOML is UTF-8 by definition; tomllib lets the decoding error through unwrapped.
        raise ConfigError(
            f"config file {path} is not UTF-8 text (byte {exc.start}: {exc.reason})"
        ) from None
    unknown = sorted((set(data) - set(_TYPES)) | (set(data) & set(_DERIVED_SETTINGS)))
    if unknown:
        hints = "".join(f" ({_DERIVED_SETTINGS[n]})" for n in unknown if n in _DERIVED_SETTINGS)
        raise ConfigError(f"config file {path}: unknown setting(s) {', '.join(unknown)}{hints}")
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


def _check_backend_url(name: str, url: str) -> None:
    """The store's or registry's URL, checked as far as it can be without reaching it:
    a malformed URL is refused here rather than when a command first opens it."""
    parts = split_url(url, name)
    _check_no_credentials(name, parts)
    if parts.scheme == "file":
        file_url_path(url, name)
    elif parts.scheme == "s3" and name == "store":
        s3_bucket_and_prefix(url)
    elif parts.port == 0:  # a Consul agent: it listens on no port 0
        raise ConfigError(f"{name} URL {url!r}: 0 is not a port (1-65535)")
    elif "#" in url:  # the key prefix would silently end there
        raise ConfigError(f"{name} URL {url!r}: a `#` would cut the key prefix short there")


def _check_no_credentials(name: str, parts: SplitResult) -> None:
    """Credentials never go in URLs: they would be logged with them and sit in config files."""
    if parts.password is not None:
        hint = "CONSUL_HTTP_TOKEN" if name == "registry" else "the AWS credential chain"
        raise ConfigError(
            f"{name}: the URL carries a password; put credentials in {hint} instead, "
            "never in the URL"
        )


def _parse_bool(value: object) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(value)


def _parse_int(value: object) -> int:
    if isinstance(value, bool):  # TOML's `true` is no number
        raise ValueError(value)
    return int(str(value))


def _parse_float(value: object) -> float:
    if isinstance(value, bool):
        raise ValueError(value)
    parsed = float(str(value))
    # NaN passes every bounds check (each comparison is false), and no duration, rate or
    # limit means anything at infinity: a NaN timeout crashed the hook's wait.
    if not math.isfinite(parsed):
        raise ValueError(value)
    return parsed


def _parse_path(value: object) -> Path:
    if value == "":  # else Path("") is the current directory
        raise ValueError(value)
    # Absolute from the start, against the directory the command was started in: a
    # relative data dir made the embedded file:// URLs nonsense, and a relative hooks dir
    # was found, then run from the install path, where it is not.
    return Path(str(value)).expanduser().absolute()


def _parse_str(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(value)
    return value


# By annotated type; every other type (`str`, `str | None`) must be given as a string.
_PARSERS: dict[str, Callable[[object], object]] = {
    "bool": _parse_bool,
    "int": _parse_int,
    "float": _parse_float,
    "Path": _parse_path,
    "Path | None": _parse_path,
}


def _coerce(name: str, value: object, source: str) -> object:
    """`value` as the type `name` is declared with, within its bounds; `source` names where
    it came from for the error."""
    rule = _RULES[name]
    try:
        parsed = _PARSERS.get(_TYPES[name], _parse_str)(value)
        if isinstance(parsed, int | float) and not isinstance(parsed, bool):
            if rule.low is not None and parsed < rule.low:
                raise ValueError(value)
            if rule.high is not None and parsed > rule.high:
                raise ValueError(value)
    except ValueError:
        raise ConfigError(f"{source}: invalid value {value!r} for {name}") from None
    return parsed


def load_settings(
    *,
    config_path: str | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, object] | None = None,
) -> Settings:
    """Merge file < environment < flags (`overrides`, None values ignored) into Settings."""
    env = os.environ if env is None else env
    values = _given_values(config_path, env, overrides or {})
    _split_masters(values)
    _fill_ports(values)
    _fill_data_dir(values)
    values["hostname"] = _checked_hostname(values.get("hostname"))
    for name in ("store", "registry"):
        url = values[name]
        assert isinstance(url, str)
        _check_backend_url(name, url)
    if "master_key" in values:
        values["master_key"] = _checked_master_key(values["master_key"])
    if "advertise" in values:
        # Minions match it against their `master` list: it must read as one of them would.
        advertise = values["advertise"]
        assert isinstance(advertise, str)
        _host_and_port(advertise, "advertise")
    return Settings(**values)  # type: ignore[arg-type]


def _given_values(
    config_path: str | None, env: Mapping[str, str], overrides: Mapping[str, object]
) -> dict[str, object]:
    """The settings given in the config file, then the environment, then flags, each typed."""
    values: dict[str, object] = {}
    config_file = find_config_file(config_path, env)
    if config_file is not None:
        for name, value in read_config_file(config_file).items():
            if name == "services":
                values[name] = _service_overrides(value, str(config_file))
            else:
                values[name] = _coerce(name, value, str(config_file))
        # Hooks live beside the config file that names the node's store and master.
        values.setdefault("hooks_dir", config_file.absolute().parent / "hooks")
    for name, rule in _RULES.items():
        # An empty variable counts as unset, as shells and most tools treat it.
        if rule.env is not None and env.get(rule.env):
            values[name] = _coerce(name, env[rule.env], rule.env)
    for name, value in overrides.items():
        flag = f"--{name.replace('_', '-')}"
        if value == "":  # typed on purpose, so not a setting left unset
            raise ConfigError(f"{flag}: an empty value")
        if value is not None:
            values[name] = _coerce(name, value, flag)
    return values


def _service_overrides(given: object, source: str) -> Mapping[str, ServiceOverride]:
    """The `[services.NAME]` tables, each checked like the global setting it overrides."""
    if not isinstance(given, dict):
        raise ConfigError(f"{source}: services must be tables, [services.NAME]")
    overrides: dict[str, ServiceOverride] = {}
    for service, table in given.items():
        where = f"{source}: [services.{service}]"
        if not is_valid_service(service):
            raise ConfigError(f"{where}: {service!r} is not a valid service name")
        if not isinstance(table, dict):
            raise ConfigError(f"{where}: must be a table of settings")
        unknown = sorted(set(table) - set(_SERVICE_SETTINGS))
        if unknown:
            raise ConfigError(
                f"{where}: unknown setting(s) {', '.join(unknown)} "
                f"(a service may set {', '.join(_SERVICE_SETTINGS)})"
            )
        checked = {name: _coerce(name, value, where) for name, value in table.items()}
        overrides[service] = ServiceOverride(**checked)  # type: ignore[arg-type]
    return MappingProxyType(overrides)


def _split_masters(values: dict[str, object]) -> None:
    """`master = "HOST[:PUBLISH_PORT],..."`: one master or several. A port given with a
    master overrides `port` for that master (and the ports derived from it); the first
    master's is this node's `port`, so that one master reads as it always did."""
    given = values.get("master", DEFAULT_MASTER)
    assert isinstance(given, str)
    parsed = [_host_and_port(entry.strip()) for entry in given.split(",")]
    port = values.get("port", DEFAULT_PORT)
    assert isinstance(port, int)
    masters = tuple(
        MasterAddress(host, port if entry_port is None else entry_port)
        for host, entry_port in parsed
    )
    values["master"], values["port"] = masters[0].host, masters[0].port
    if len(set(masters)) != len(masters):
        raise ConfigError(f"master {given!r} names one master twice")
    values["masters"] = masters


def _has_port(address: str) -> bool:
    """`host:port` or `[v6]:port`, not a bare host or IPv6 address."""
    host, separator, port = address.rpartition(":")
    return bool(separator) and port.isdigit() and (":" not in host or host.endswith("]"))


def _host_and_port(entry: str, setting: str = "master") -> tuple[str, int | None]:
    """`host`, `host:port`, `[v6]`, `[v6]:port`; a bare IPv6 address has no port."""
    if not entry:
        raise ConfigError(f"{setting}: an empty entry where a host belongs")
    host, separator, port_text = entry.rpartition(":")
    if not separator or (host.count(":") and not host.endswith("]")):
        _check_address_host(entry, entry, setting)
        return entry, None
    if not port_text.isdigit() or not 0 < int(port_text) <= 65535:
        raise ConfigError(f"{setting} {entry!r}: {port_text!r} is not a port (1-65535)")
    if not host:
        raise ConfigError(f"{setting} {entry!r} names no host")
    _check_address_host(host, entry, setting)
    return host, int(port_text)


def _check_address_host(host: str, entry: str, setting: str) -> None:
    """A host name, an IPv4 address, or an IPv6 address (bracketed when a port follows):
    anything else (`a b`, `m1/x`) would only fail later, as an unreachable endpoint."""
    bracketed = host.startswith("[") and host.endswith("]")
    if not bracketed and is_valid_host(host):
        return
    import ipaddress  # only for IPv6: host names and IPv4 addresses pass above

    try:
        if ipaddress.ip_address(host[1:-1] if bracketed else host).version == 6:
            return
    except ValueError:
        pass
    raise ConfigError(f"{setting} {entry!r}: {host!r} is not a host name or an IP address")


def _fill_ports(values: dict[str, object]) -> None:
    port = values.setdefault("port", DEFAULT_PORT)
    assert isinstance(port, int)
    for name, offset in _DERIVED_PORTS.items():
        # Port 0 asks the OS for free ports, for every socket alike.
        values.setdefault(name, port + offset if port else 0)
    if port:
        _check_derived_ports(values, port)


def _check_derived_ports(values: dict[str, object], port: int) -> None:
    """Each master's other ports sit at the same offsets from its publish port as ours do
    from `port`: a publish port near 65535 would put them past the last port."""
    masters = values["masters"]
    assert isinstance(masters, tuple)
    for master in masters:
        where = f"port {port}" if master == masters[0] else f"master {master.address}"
        for name in _DERIVED_PORTS:
            own = values[name]
            assert isinstance(own, int)
            derived = master.port + own - port
            # A role's port 0 asks the OS for a free port: no offset to keep.
            if own and not 0 < derived <= 65535:
                raise ConfigError(
                    f"{where}: the {name} that follows from it, {derived}, "
                    "is not a port (1-65535); choose another publish port"
                )


def _fill_data_dir(values: dict[str, object]) -> None:
    """The data dir, and the embedded store, registry and install dir under it."""
    data_dir = values.get("data_dir")
    if not isinstance(data_dir, Path):
        data_dir = default_data_dir()
    values["data_dir"] = data_dir
    # as_uri() escapes what a URL would misread: a `#` or `?` in the data dir.
    values.setdefault("store", (data_dir / "store").as_uri())
    values.setdefault("registry", (data_dir / "mappings.json").as_uri())
    values.setdefault("install_dir", data_dir / "install")


def _checked_hostname(given: object) -> str:
    # os.uname() is gethostname(2) without importing socket; an empty name is checked.
    hostname = os.uname().nodename if given is None else given
    assert isinstance(hostname, str)
    try:
        return check_host(hostname)
    except Exception as exc:
        raise ConfigError(f"hostname: {exc}") from None


def _checked_master_key(given: object) -> str | None:
    if given == "":
        return None
    assert isinstance(given, str)
    from daybook.model.keys import is_public_key

    if not is_public_key(given.strip()):
        raise ConfigError(
            "master_key: not a CURVE public key (40 characters of Z85, as printed by "
            "`daybook keys fingerprint` on the master)"
        )
    return given.strip()
