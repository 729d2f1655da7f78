"""The Consul registry: one KV key per host pattern under a prefix, services as `a,b,c`."""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import queue
import re
import ssl
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit

import consul
import requests
import requests.adapters
from consul.callback import CB
from consul.exceptions import BadRequest

from daybook import wire
from daybook.backoff import backoff_s
from daybook.errors import ConfigError, ConflictError, DaybookError, RegistryError
from daybook.model.mappings import MappingTable, format_services, parse_services, unique_services
from daybook.model.names import check_service
from daybook.model.patterns import check_pattern, is_valid_pattern
from daybook.model.pins import Pin
from daybook.registry.base import DEFAULT_KEY_PREFIX, PinUpdate, ServicesUpdate, Snapshot
from daybook.urls import split_url

if TYPE_CHECKING:
    from requests.adapters import _HostParams, _PoolKwargs

log = logging.getLogger(__name__)

DEFAULT_ADDRESS = "127.0.0.1:8500"
DEFAULT_PORT = 8500
# Connect and non-blocking answer timeout. py-consul adds a blocking query's wait and its
# wait/16 of jitter on top, so a held watch is never cut short by our own client.
DEFAULT_TIMEOUT_S = 10.0
# Check-and-set attempts before update() gives up, and the cap of the jittered backoff.
MAX_CAS_ATTEMPTS = 20
FIRST_CAS_BACKOFF_S = 0.005
MAX_CAS_BACKOFF_S = 0.2
_MAX_DETAIL_CHARS = 300
_STATUS_RE = re.compile(r"(\d{3}) (.*)", re.DOTALL)
_TRUE = {"1", "t", "true"}  # Go's strconv.ParseBool, as Consul's own tools read the env
_FALSE = {"0", "f", "false"}
_GO_DURATION_RE = re.compile(r"(?:\d+(?:\.\d*)?(?:ms|s|m|h))+")
_GO_DURATION_PART_RE = re.compile(r"(\d+(?:\.\d*)?)(ms|s|m|h)")
_DURATION_UNITS_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
# What Consul's own clients read to decide on TLS; any of them asks for HTTPS.
_TLS_VARIABLES = (
    "CONSUL_CACERT",
    "CONSUL_CAPATH",
    "CONSUL_CLIENT_CERT",
    "CONSUL_CLIENT_KEY",
    "CONSUL_TLS_SERVER_NAME",
)
# Query parameters of a registry URL, and the Consul parameter each one becomes.
_URL_OPTIONS = {"dc": "dc", "ns": "ns", "partition": "partition", "wait": None}
# Consul 1.21.5's answer to a key outside its regex (hashicorp/consul#22682).
_KEY_RULE_1_21_5 = "invalid key name, keys should respect the"

T = TypeVar("T")

_LIST_CALLBACK = CB.json(index=True, decode="Value")
_GET_CALLBACK = CB.json(index=True, one=True, decode="Value")
_WRITE_CALLBACK = CB.json()


def _txn_results(response: Any) -> list[Any] | None:
    """A txn's `Results`, or None when it was rolled back (409); any other status raises
    as py-consul's JSON callback would."""
    if response.code == 409:
        return None
    document = _WRITE_CALLBACK(response)
    results = document.get("Results") if isinstance(document, dict) else None
    return list(results) if isinstance(results, list) else []


@dataclass(frozen=True)
class ConsulTLS:
    """How to trust the agent and prove who we are, as Consul's CLI and Go clients do."""

    verify: bool = True
    ca_file: str | None = None
    ca_path: str | None = None
    client_cert: str | None = None
    client_key: str | None = None
    # The name the agent's certificate must carry, when it is not the address's host.
    server_name: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ConsulTLS:
        client_cert, client_key = env.get("CONSUL_CLIENT_CERT"), env.get("CONSUL_CLIENT_KEY")
        if bool(client_cert) != bool(client_key):
            raise ConfigError("set both CONSUL_CLIENT_CERT and CONSUL_CLIENT_KEY, or neither")
        verify = not env.get("CONSUL_HTTP_SSL_VERIFY") or bool(
            _env_bool(env, "CONSUL_HTTP_SSL_VERIFY")
        )
        return cls(
            verify=verify,
            ca_file=env.get("CONSUL_CACERT") or None,
            ca_path=env.get("CONSUL_CAPATH") or None,
            client_cert=client_cert or None,
            client_key=client_key or None,
            server_name=env.get("CONSUL_TLS_SERVER_NAME") or None,
        )

    def context(self) -> ssl.SSLContext:
        """The trust of Consul's Go client: CONSUL_CACERT, else every file in CONSUL_CAPATH,
        else the system store (which honours SSL_CERT_FILE and SSL_CERT_DIR), never
        requests' certifi bundle."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        if not self.verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        elif self.ca_file:
            _load_ca(context, "CONSUL_CACERT", self.ca_file)
        elif self.ca_path:
            _load_ca_dir(context, self.ca_path)
        else:
            context.load_default_certs()
        if self.client_cert and self.client_key:
            try:
                context.load_cert_chain(self.client_cert, self.client_key)
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(
                    f"cannot use CONSUL_CLIENT_CERT {self.client_cert} with CONSUL_CLIENT_KEY "
                    f"{self.client_key}: {_ssl_reason(exc)}"
                ) from None
        return context


def _load_ca(context: ssl.SSLContext, variable: str, path: str) -> None:
    try:
        context.load_verify_locations(cafile=path)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"{variable}: cannot load CA certificates from {path}: {_ssl_reason(exc)}"
        ) from None


def _load_ca_dir(context: ssl.SSLContext, directory: str) -> None:
    """Every file under the directory, whatever its name, as go-rootcerts loads them (not
    only OpenSSL's hashed names)."""
    files = sorted(p for p in Path(directory).rglob("*") if p.is_file())
    if not Path(directory).is_dir() or not files:
        raise ConfigError(f"CONSUL_CAPATH {directory} holds no CA certificate files")
    for path in files:
        _load_ca(context, "CONSUL_CAPATH", str(path))


def _ssl_reason(exc: OSError | ssl.SSLError) -> str:
    if isinstance(exc, ssl.SSLError):
        return exc.reason or "not a PEM certificate or key"
    return exc.strerror or type(exc).__name__


@dataclass(frozen=True)
class ConsulEndpoint:
    """Where and how to reach the agent, resolved once from arguments and CONSUL_* variables."""

    scheme: str
    host: str
    port: int
    tls: ConsulTLS
    # Kept out of repr so that logging an endpoint can never leak a secret.
    token: str | None = field(repr=False)
    # CONSUL_HTTP_AUTH: HTTP basic auth in front of the agent, as (user, password).
    auth: tuple[str, str] | None = field(default=None, repr=False)

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def secrets(self) -> tuple[str, ...]:
        """What must never appear in a message or a log line."""
        return tuple(s for s in (self.token, self.auth[1] if self.auth else None) if s)

    @classmethod
    def from_env(
        cls,
        address: str | None,
        *,
        https: bool = False,
        token: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> ConsulEndpoint:
        """Resolve like Consul's Go client: `address`, else CONSUL_HTTP_ADDR, else 127.0.0.1:8500.

        HTTPS is used if `https`, an `https://` address or CONSUL_HTTP_SSL=true asks for
        it, and also when a CA, a client certificate or a TLS server name is set, unless
        the address says `http://` or CONSUL_HTTP_SSL=false. The token is `token`, else the
        file named by CONSUL_HTTP_TOKEN_FILE, else CONSUL_HTTP_TOKEN, stripped.
        """
        env = os.environ if env is None else env
        raw = address or env.get("CONSUL_HTTP_ADDR") or DEFAULT_ADDRESS
        explicit, host, port = _split_address(raw)
        tls = ConsulTLS.from_env(env)
        scheme = _choose_scheme(explicit, https, env)
        if token is not None:
            token = _clean_token(token, "the ACL token given")
        else:
            token = _token_from_file(env.get("CONSUL_HTTP_TOKEN_FILE"))
        if token is None:
            token = _clean_token(env.get("CONSUL_HTTP_TOKEN") or "", "CONSUL_HTTP_TOKEN")
        return cls(scheme, host, port, tls, token, _basic_auth(env.get("CONSUL_HTTP_AUTH")))


def _split_address(raw: str) -> tuple[str | None, str, int]:
    """(explicit scheme or None, host, port) of `[SCHEME://]HOST[:PORT]`."""
    explicit: str | None = None
    scheme_part, sep, rest = raw.partition("://")
    if sep:
        explicit = scheme_part.lower()
        if explicit == "unix":
            raise ConfigError(f"Consul address {raw!r}: unix sockets are not supported")
        if explicit not in ("http", "https"):
            raise ConfigError(f"Consul address {raw!r}: unknown scheme {scheme_part!r}")
        raw = rest
    try:
        parts = urlsplit("//" + raw.rstrip("/"))
        # Only a missing port takes the default: `:0` was quietly read as 8500.
        port = DEFAULT_PORT if parts.port is None else parts.port
    except ValueError:
        parts, port = None, 0
    if parts is None or not parts.hostname or parts.path or parts.query or parts.username:
        raise ConfigError(f"Consul address {raw!r} is not HOST[:PORT]")
    if port == 0:
        raise ConfigError(f"Consul address {raw!r}: 0 is not a port (1-65535)")
    return explicit, parts.hostname, port


def _choose_scheme(explicit: str | None, https: bool, env: Mapping[str, str]) -> str:
    ssl_flag = _env_bool(env, "CONSUL_HTTP_SSL")
    # As in Consul's client, an explicit request for TLS is never reverted to http.
    if https or explicit == "https" or ssl_flag:
        return "https"
    tls_settings = [name for name in _TLS_VARIABLES if env.get(name)]
    if not tls_settings:
        return "http"
    if explicit == "http" or ssl_flag is False:
        log.warning(
            "%s is set, but %s asks for plain HTTP: Consul is reached without TLS and the "
            "ACL token travels in clear",
            " and ".join(tls_settings),
            "CONSUL_HTTP_SSL=false" if ssl_flag is False else "the address's http://",
        )
        return "http"
    # A CA or a client certificate only makes sense with TLS: Consul's Go client would
    # quietly talk plain HTTP here, and send the token in clear.
    return "https"


def _env_bool(env: Mapping[str, str], name: str) -> bool | None:
    """A boolean variable as Go's strconv.ParseBool reads it; None when unset or empty."""
    value = env.get(name, "").strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    if value:
        raise ConfigError(f"{name}={env[name]!r} is not a boolean (use true or false)")
    return None


def _clean_token(raw: str, source: str) -> str | None:
    """The token without the whitespace a mounted secret file leaves around it. Anything
    else that cannot go in an HTTP header is refused, without ever showing the token."""
    token = raw.strip()
    if token and not (token.isascii() and token.isprintable() and " " not in token):
        raise ConfigError(
            f"{source} holds characters an ACL token cannot have (spaces or control "
            "characters inside it); the token is not shown"
        )
    return token or None


def _token_from_file(path: str | None) -> str | None:
    if not path:
        return None
    try:
        text = Path(path).read_text()
        mode = Path(path).stat().st_mode
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not text"
        raise ConfigError(f"cannot read CONSUL_HTTP_TOKEN_FILE {path}: {reason}") from None
    if mode & 0o004:
        log.warning(
            "CONSUL_HTTP_TOKEN_FILE %s is readable by every user, and it holds a secret: "
            "run `chmod o-r %s`",
            path,
            path,
        )
    return _clean_token(text, f"CONSUL_HTTP_TOKEN_FILE {path}")


def _basic_auth(value: str | None) -> tuple[str, str] | None:
    if not value:
        return None
    user, _, password = value.partition(":")
    return user, password


@dataclass(frozen=True)
class ConsulScope:
    """Which table the registry reads (datacenter, Enterprise namespace and partition) and
    the longest a watch may be held open."""

    datacenter: str | None = None
    namespace: str | None = None
    partition: str | None = None
    max_wait_s: float | None = None

    @classmethod
    def from_query(cls, query: str, env: Mapping[str, str] | None = None) -> ConsulScope:
        """From a registry URL's query (`dc`, `ns`, `partition`, `wait`), then
        CONSUL_NAMESPACE and CONSUL_PARTITION."""
        env = os.environ if env is None else env
        values: dict[str, str] = {}
        for name, value in parse_qsl(query, keep_blank_values=True):
            if name == "token":
                raise ConfigError(
                    "registry URL: never put the ACL token in the URL; use CONSUL_HTTP_TOKEN "
                    "or CONSUL_HTTP_TOKEN_FILE"
                )
            if name not in _URL_OPTIONS or name in values or not value:
                raise ConfigError(
                    f"registry URL: {name!r} is not an option; use dc=, ns=, partition= and "
                    "wait= (a Go duration such as 20s), each once with a value"
                )
            values[name] = value
        wait = values.get("wait")
        return cls(
            datacenter=values.get("dc"),
            namespace=values.get("ns") or env.get("CONSUL_NAMESPACE") or None,
            partition=values.get("partition") or env.get("CONSUL_PARTITION") or None,
            max_wait_s=_parse_wait(wait) if wait else None,
        )

    def params(self) -> list[tuple[str, str]]:
        """The query parameters every KV request carries."""
        pairs = (("dc", self.datacenter), ("ns", self.namespace), ("partition", self.partition))
        return [(name, value) for name, value in pairs if value]

    def query(self) -> str:
        pairs = self.params()
        if self.max_wait_s is not None:
            pairs.append(("wait", _go_duration(self.max_wait_s)))
        return urlencode(pairs)


def _parse_wait(text: str) -> float:
    if not _GO_DURATION_RE.fullmatch(text):
        raise ConfigError(f"registry URL: wait={text!r} is not a duration such as 20s or 1m30s")
    seconds = sum(
        float(number) * _DURATION_UNITS_S[unit]
        for number, unit in _GO_DURATION_PART_RE.findall(text)
    )
    if seconds < 1:
        raise ConfigError(f"registry URL: wait={text!r} is below one second")
    return seconds


def _go_duration(seconds: float) -> str:
    # Milliseconds, at least 1: Consul takes `wait=0` as its 5-minute default.
    return f"{max(1, int(seconds * 1000))}ms"


class _TLSAdapter(requests.adapters.HTTPAdapter):
    """HTTPS with our own SSLContext: requests would add certifi's bundle (or
    REQUESTS_CA_BUNDLE) to any context it is given, and cannot check another name."""

    def __init__(self, context: ssl.SSLContext, server_name: str | None) -> None:
        self._context = context
        self._server_name = server_name
        super().__init__()

    def build_connection_pool_key_attributes(
        self, request: requests.PreparedRequest, verify: Any, cert: Any = None
    ) -> tuple[_HostParams, _PoolKwargs]:
        host_params, _ = super().build_connection_pool_key_attributes(request, verify, cert)
        verifying = self._context.verify_mode != ssl.CERT_NONE
        pool: _PoolKwargs = {
            "ssl_context": self._context,
            # urllib3 sets the context's verify_mode from this on every connection.
            "cert_reqs": "CERT_REQUIRED" if verifying else "CERT_NONE",
        }
        if self._server_name:
            # The SNI name, and the one the certificate must carry (check_hostname). urllib3
            # takes it as a pool key; the stubs' TypedDict does not list it.
            pool["server_hostname"] = self._server_name  # type: ignore[typeddict-unknown-key]
        return host_params, pool

    def cert_verify(self, conn: Any, url: str, verify: Any, cert: Any) -> None:
        pass  # the context alone decides what is trusted


def _session(endpoint: ConsulEndpoint) -> requests.Session:
    """The HTTP session py-consul sends through: proxies, trust and credentials are decided
    here from Consul's own variables, not by requests from the environment."""
    session = requests.Session()
    # Else REQUESTS_CA_BUNDLE, .netrc and proxies for loopback would come from the env.
    session.trust_env = False
    if not _is_loopback(endpoint.host):
        # HTTP(S)_PROXY and NO_PROXY as Go's clients read them; they never proxy loopback.
        session.proxies = requests.utils.get_environ_proxies(
            f"{endpoint.scheme}://{endpoint.address}"
        )
    if endpoint.scheme == "https":
        adapter = _TLSAdapter(endpoint.tls.context(), endpoint.tls.server_name)
        session.mount("https://", adapter)
    if endpoint.auth is not None:
        session.auth = endpoint.auth
    return session


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class _Listing:
    """One recursive GET of a prefix: Consul's index for it and the entries (None: 404)."""

    index: int
    entries: list[dict[str, Any]] | None


def pins_prefix_for(key_prefix: str) -> str:
    """Where pins live: beside the mappings, `daybook/hosts/` -> `daybook/pins/`."""
    segments = key_prefix.rstrip("/").split("/")
    if segments[-1] == "pins":
        raise ConfigError(
            f"the Consul key prefix {key_prefix!r} ends in pins/, where the pins beside it "
            "would go: name the mappings' prefix otherwise (e.g. daybook/hosts/)"
        )
    return "/".join([*segments[:-1], "pins"]) + "/"


class ConsulRegistry:
    """Mappings in Consul KV: key `PREFIX + pattern`, value the services joined by commas.

    Pins live beside the prefix, one key per service (`daybook/pins/<service>`), each
    value a pin as JSON. Every write is a check-and-set on the key's ModifyIndex, so
    concurrent operators never lose each other's updates. Reads take each prefix in one
    recursive GET, and `watch` holds a blocking query on each at once (see `watch`).
    """

    def __init__(
        self,
        address: str | None = None,
        key_prefix: str = DEFAULT_KEY_PREFIX,
        https: bool = False,
        *,
        token: str | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        scope: ConsulScope | None = None,
    ) -> None:
        self._endpoint = ConsulEndpoint.from_env(address, https=https, token=token)
        self._prefix = _check_prefix(key_prefix)
        self._pins_prefix = pins_prefix_for(self._prefix)
        self._scope = scope or ConsulScope.from_query("")
        self._token = self._endpoint.token
        self._client: Any = consul.Consul(
            host=f"[{self._endpoint.host}]" if ":" in self._endpoint.host else self._endpoint.host,
            port=self._endpoint.port,
            scheme=self._endpoint.scheme,
            # py-consul passes these to requests; the session's adapter decides instead.
            verify=True,
            cert=None,
            # py-consul takes the timeout here only: per call it raises TypeError.
            connections_timeout=timeout_s,
        )
        self._client.http.session = _session(self._endpoint)
        # py-consul lets CONSUL_HTTP_TOKEN override an explicit token; the token is resolved
        # above and sent explicitly on every call instead.
        self._client.token = None
        # Parsed values by key and ModifyIndex: an unchanged key is neither re-parsed nor
        # warned about again on every watch round.
        self._parsed: dict[str, tuple[int, tuple[str, ...] | None]] = {}
        self._parsed_pins: dict[str, tuple[int, Pin | None]] = {}

    @classmethod
    def from_url(cls, url: str, *, key_prefix: str = DEFAULT_KEY_PREFIX) -> ConsulRegistry:
        """`consul[+https]://[HOST:PORT][/KEY_PREFIX][?dc=&ns=&partition=&wait=]`."""
        parsed = split_url(url, "registry")
        prefix = parsed.path.lstrip("/") or key_prefix
        return cls(
            address=parsed.netloc or None,
            key_prefix=prefix if prefix.endswith("/") else prefix + "/",
            https=parsed.scheme == "consul+https",
            scope=ConsulScope.from_query(parsed.query),
        )

    @property
    def url(self) -> str:
        scheme = "consul+https" if self._endpoint.scheme == "https" else "consul"
        query = self._scope.query()
        return f"{scheme}://{self._endpoint.address}/{self._prefix}" + (
            f"?{query}" if query else ""
        )

    @property
    def address(self) -> str:
        return self._endpoint.address

    @property
    def key_prefix(self) -> str:
        return self._prefix

    @property
    def pins_prefix(self) -> str:
        return self._pins_prefix

    @property
    def max_wait_s(self) -> float | None:
        """The registry URL's `wait`: the longest any blocking query may be held."""
        return self._scope.max_wait_s

    def read(self) -> Snapshot:
        """The whole table and the pins, from one recursive GET each; a missing prefix is
        an empty table (no pins)."""
        hosts = self._list(f"read {self._prefix}", [])
        pins = self._list_pins(f"read {self._pins_prefix}", [])
        return self._snapshot(hosts, pins)

    def watch(self, index: int, timeout_s: float) -> Snapshot:
        """Blocking queries on the mappings' prefix and the pins' at once: returns when
        Consul's index of either passes `index`, or after about `timeout_s` (plus up to
        1/16 of Consul's jitter) with the same data.

        The snapshot's index is the larger of the two prefixes' indexes. Consul's indexes
        are raft indexes shared by the whole KV store, so any later write to either prefix
        carries a larger one, and blocking both on that one number misses nothing. When
        one query answers with a change, the other prefix is read afresh and its held
        query is left to end on its own (a blocked request cannot be cut short).

        The registry URL's `wait` caps `timeout_s`, so a load balancer that cuts idle
        connections never sees a watch outlast it. `index` 0 answers at once. The returned
        index can be *lower* than `index`, after a Consul snapshot restore or when delete
        tombstones are reaped: callers must then reset their index to 0 (Consul's rule),
        and always compare data, not indexes.
        """
        if index <= 0:
            return self.read()
        if self._scope.max_wait_s is not None:
            timeout_s = min(timeout_s, self._scope.max_wait_s)
        params = [("index", str(index)), ("wait", _go_duration(timeout_s))]
        answers: queue.Queue[tuple[str, _Listing | Exception]] = queue.Queue()
        queries = {
            "hosts": partial(self._list, f"watch {self._prefix}", params),
            "pins": partial(self._list_pins, f"watch {self._pins_prefix}", params),
        }
        for which, query in queries.items():
            threading.Thread(
                target=_answer_into,
                args=(answers, which, query),
                name=f"consul-watch-{which}",
                daemon=True,
            ).start()
        listings = _first_answer(answers)
        if next(iter(listings.values())).index > index:
            # A change on one side: the other's held query may go on for the whole wait.
            if "hosts" not in listings:
                listings["hosts"] = self._list(f"read {self._prefix}", [])
            if "pins" not in listings:
                listings["pins"] = self._list_pins(f"read {self._pins_prefix}", [])
        else:
            listings.update(_first_answer(answers))
        return self._snapshot(listings["hosts"], listings["pins"], held=index)

    def list_entries(
        self, prefix: str, index: int, timeout_s: float
    ) -> tuple[int, list[dict[str, Any]] | None]:
        """The raw entries under `prefix` (any prefix of this Consul, such as the key
        ring's) and the X-Consul-Index: at once when `index` is 0, else a blocking query
        as `watch` describes. None for an empty prefix. Refused when ACLs hide a part."""
        action = f"watch {prefix}" if index > 0 else f"read {prefix}"
        params: list[tuple[str, str]] = []
        if index > 0:
            if self._scope.max_wait_s is not None:
                timeout_s = min(timeout_s, self._scope.max_wait_s)
            params = [("index", str(index)), ("wait", _go_duration(timeout_s))]
        headers, listing = self._get_prefix(prefix, action, params)
        self._check_complete(headers, prefix)
        if listing.entries is None:
            # Recursive reads are filtered, not refused, so without read rights an empty
            # answer looks like an empty table; a single-key read is refused outright.
            self._get(action, prefix)
        return listing.index, listing.entries

    def _list(self, action: str, params: list[tuple[str, str]]) -> _Listing:
        headers, listing = self._get_prefix(self._prefix, action, params)
        self._check_complete(headers, self._prefix)
        if listing.entries is None:
            # Recursive reads are filtered, not refused, so without read rights an empty
            # answer looks like an empty table; a single-key read is refused outright.
            self._get(action, self._prefix)
        return listing

    def _list_pins(self, action: str, params: list[tuple[str, str]]) -> _Listing:
        # A token that may read the mappings but not the pins predates pins: it reads as
        # no pins (said once in the log), so such a fleet runs exactly as it did before.
        headers, listing = self._get_prefix(self._pins_prefix, action, params)
        if headers.get("X-Consul-Results-Filtered-By-ACLs", "").lower() == "true":
            log.warning(
                "Consul at %s hid some pins under %r from the ACL token; it needs key:read "
                "there for every pin to reach the hosts",
                self.address,
                self._pins_prefix,
            )
        return listing

    def _get_prefix(
        self, prefix: str, action: str, params: list[tuple[str, str]]
    ) -> tuple[Mapping[str, str], _Listing]:
        # py-consul's kv.get drops the response headers, and they tell whether the table may
        # be partial; its HTTP client still sizes the timeout from `wait`.
        headers, (raw_index, entries) = self._call(
            action,
            partial(
                self._client.http.get,
                _keep_headers,
                f"/v1/kv/{prefix}",
                params=[("recurse", "1"), *params, *self._scope.params()],
                headers=self._client.prepare_headers(self._token),
            ),
        )
        try:
            index = int(raw_index)
        except (TypeError, ValueError):
            raise RegistryError(
                f"Consul at {self.address} sent an invalid X-Consul-Index {raw_index!r}"
            ) from None
        return headers, _Listing(index, entries)

    def get_entry(self, key: str) -> Mapping[str, Any] | None:
        """One key's raw entry (`Value` decoded to bytes, `ModifyIndex`), None if missing."""
        return self._get(f"read {key}", key)

    def write_entry(self, key: str, value: str, cas: int) -> bool:
        """PUT with check-and-set (`cas` 0 creates); False when the key changed meanwhile."""
        return self._write(f"write {key}", "PUT", key, cas, value)

    def delete_entry(self, key: str, cas: int) -> bool:
        """DELETE with check-and-set; False when the key changed meanwhile."""
        return self._write(f"delete {key}", "DELETE", key, cas)

    def _check_complete(self, headers: Mapping[str, str], prefix: str) -> None:
        """Refuse a table Consul may have filtered: serving part of it would send hosts to
        less specific patterns."""
        if headers.get("X-Consul-Results-Filtered-By-ACLs", "").lower() == "true":
            raise RegistryError(
                f"Consul at {self.address} hid some keys under {prefix!r} from the ACL "
                "token; it needs key:read on the whole prefix (check CONSUL_HTTP_TOKEN)"
            )
        acls_on = headers.get("X-Consul-Default-Acl-Policy", "").lower() == "deny"
        if acls_on and self._token is None:
            # Consul filters the anonymous token's reads without saying so.
            raise RegistryError(
                f"Consul at {self.address} enforces ACLs (default policy deny) and no ACL token "
                "is set: it would hide the keys the anonymous token may not read without "
                "saying so, so the table cannot be trusted as complete; set CONSUL_HTTP_TOKEN "
                f"or CONSUL_HTTP_TOKEN_FILE to a token with key:read on {prefix!r}"
            )

    def _get(self, action: str, key: str) -> Mapping[str, Any] | None:
        _, entry = self._call(
            action,
            partial(
                self._client.http.get,
                _GET_CALLBACK,
                f"/v1/kv/{key}",
                params=self._scope.params(),
                headers=self._client.prepare_headers(self._token),
            ),
        )
        return entry if isinstance(entry, Mapping) else None

    def _write(self, action: str, method: str, key: str, cas: int, value: str = "") -> bool:
        http = self._client.http
        request = partial(
            http.put if method == "PUT" else http.delete,
            _WRITE_CALLBACK,
            f"/v1/kv/{key}",
            params=[("cas", str(cas)), *self._scope.params()],
            headers=self._client.prepare_headers(self._token),
        )
        if method == "PUT":
            request = partial(request, data=value)
        return self._call(action, request) is True

    def send(
        self,
        action: str,
        method: str,
        path: str,
        callback: Callable[[Any], T],
        *,
        params: Sequence[tuple[str, str]] = (),
        data: str | bytes | None = None,
    ) -> T:
        """One request to the agent through this registry's client, with its token, TLS,
        scope (dc, ns, partition) and one-line errors: for other users of the same agent,
        such as the leader lock beside the mappings. `callback` is a py-consul CB."""
        http = self._client.http
        verbs = {"GET": http.get, "PUT": http.put, "DELETE": http.delete}
        request = partial(
            verbs[method],
            callback,
            path,
            params=[*params, *self._scope.params()],
            headers=self._client.prepare_headers(self._token),
        )
        if data is not None:
            request = partial(request, data=data)
        answer: T = self._call(action, request)
        return answer

    def transact(self, action: str, operations: Sequence[Mapping[str, Any]]) -> list[Any] | None:
        """One transaction (/v1/txn): its results, or None when Consul rolled it back
        (409: one of its operations failed, a check-and-set that lost for one)."""
        answer: list[Any] | None = self.send(
            action, "PUT", "/v1/txn", _txn_results, data=json.dumps(list(operations))
        )
        return answer

    def update(self, pattern: str, change: ServicesUpdate) -> tuple[str, ...]:
        """Read the key, apply `change`, write back with check-and-set; retry on conflict.

        An empty result deletes the key (also by check-and-set). Raises ConflictError after
        MAX_CAS_ATTEMPTS lost races, InputError for an invalid pattern or service name.
        """
        check_pattern(pattern)  # a valid pattern has no `/`, so it is exactly one key
        key = self._prefix + pattern
        for attempt in range(MAX_CAS_ATTEMPTS):
            entry = self._get(f"read {key}", key)
            modify_index = int(entry["ModifyIndex"]) if entry else 0
            current = _services_of(entry, key) if entry else ()
            wanted = unique_services(change(current))
            if wanted == current:
                return current
            if not wanted and entry is None:
                return ()
            if wanted:
                value = format_services(wanted)
                written = self._write(f"write {key}", "PUT", key, modify_index, value)
            else:
                written = self._write(f"delete {key}", "DELETE", key, modify_index)
            if written:
                return wanted
            log.debug("check-and-set on %s lost a race (attempt %d)", key, attempt + 1)
            # Jittered and growing, so writers that collided do not collide again in step.
            time.sleep(backoff_s(attempt + 1, start_s=FIRST_CAS_BACKOFF_S, max_s=MAX_CAS_BACKOFF_S))
        raise ConflictError(
            f"gave up updating {pattern!r} in Consul at {self.address}: "
            f"{MAX_CAS_ATTEMPTS} concurrent writes won the check-and-set first"
        )

    def update_pin(self, service: str, change: PinUpdate) -> Pin | None:
        """Read the service's pin key, apply `change`, write back with check-and-set (0 to
        create); retry on conflict. None from `change` deletes the key, also by
        check-and-set. A stored value that is not a valid pin reads as no pin."""
        check_service(service)
        key = self._pins_prefix + service
        for attempt in range(MAX_CAS_ATTEMPTS):
            entry = self._get(f"read {key}", key)
            modify_index = int(entry["ModifyIndex"]) if entry else 0
            current = self._parse_pin(key, entry) if entry else None
            wanted = change(current)
            if wanted == current and (wanted is not None or entry is None):
                return current
            if wanted is None:
                written = self._write(f"delete {key}", "DELETE", key, modify_index)
            else:
                if wanted.service != service:
                    raise ValueError(f"a pin of {wanted.service!r} is not one of {service!r}")
                value = wire.to_json(wanted).decode()
                written = self._write(f"write {key}", "PUT", key, modify_index, value)
            if written:
                return wanted
            log.debug("check-and-set on %s lost a race (attempt %d)", key, attempt + 1)
            time.sleep(backoff_s(attempt + 1, start_s=FIRST_CAS_BACKOFF_S, max_s=MAX_CAS_BACKOFF_S))
        raise ConflictError(
            f"gave up updating the pin of {service!r} in Consul at {self.address}: "
            f"{MAX_CAS_ATTEMPTS} concurrent writes won the check-and-set first"
        )

    def close(self) -> None:
        # py-consul's own close() is a no-op and leaves the pooled connections open.
        self._client.http.session.close()

    def _snapshot(self, hosts: _Listing, pins: _Listing, held: int = 0) -> Snapshot:
        mappings: MappingTable = {}
        owners: dict[str, str] = {}
        parsed: dict[str, tuple[int, tuple[str, ...] | None]] = {}
        for entry in hosts.entries or ():
            key = str(entry["Key"])
            modify_index = int(entry.get("ModifyIndex") or 0)
            cached = self._parsed.get(key)
            if cached is not None and cached[0] == modify_index:
                services = cached[1]
            else:
                services = self._parse_entry(key, entry)
            parsed[key] = (modify_index, services)
            if not services:
                continue
            pattern = key[len(self._prefix) :]
            normalised = pattern.lower()
            if normalised in owners:
                if cached is None or cached[0] != modify_index:
                    log.warning(
                        "skipping Consul key %r: the same pattern as %r (patterns ignore case)",
                        key,
                        owners[normalised],
                    )
                continue
            owners[normalised] = key
            mappings[pattern] = services
        self._parsed = parsed
        # Consul never sends 0, but a 0 would turn every watch into a busy loop.
        index = max(1, hosts.index, pins.index)
        # Either prefix's index below the one held went backwards (a snapshot restore,
        # reaped tombstones): say so with that lower index, so the caller starts over from
        # 0 as Consul asks, even when the other prefix's index hides it.
        backwards = [listing.index for listing in (hosts, pins) if 0 < listing.index < held]
        if backwards:
            index = max(backwards)
        return Snapshot(mappings=mappings, index=index, pins=self._pins_of(pins))

    def _pins_of(self, listing: _Listing) -> dict[str, Pin]:
        pins: dict[str, Pin] = {}
        parsed: dict[str, tuple[int, Pin | None]] = {}
        for entry in listing.entries or ():
            key = str(entry["Key"])
            modify_index = int(entry.get("ModifyIndex") or 0)
            cached = self._parsed_pins.get(key)
            # Parsed (and warned about) once per value, not on every watch round.
            pin = cached[1] if cached and cached[0] == modify_index else self._parse_pin(key, entry)
            parsed[key] = (modify_index, pin)
            if pin is not None:
                pins[pin.service] = pin
        self._parsed_pins = parsed
        return pins

    def _parse_pin(self, key: str, entry: Mapping[str, Any]) -> Pin | None:
        service = key[len(self._pins_prefix) :]
        if not service:
            return None  # the prefix's own "folder" key
        value = entry.get("Value") or b""
        try:
            pin = wire.from_json(Pin, value)
        except DaybookError as exc:
            log.warning("skipping Consul key %r: not a pin (%s)", key, exc)
            return None
        if pin.service != service:
            log.warning("skipping Consul key %r: it holds a pin of %r", key, pin.service)
            return None
        return pin

    def _parse_entry(self, key: str, entry: Mapping[str, Any]) -> tuple[str, ...] | None:
        pattern = key[len(self._prefix) :]
        if not pattern:
            return None  # the prefix's own "folder" key, as the Consul UI creates
        if "/" in pattern or not is_valid_pattern(pattern):
            log.warning("skipping Consul key %r: %r is not a valid host pattern", key, pattern)
            return None
        return _services_of(entry, key) or None

    def _call(self, action: str, request: Callable[[], T]) -> T:
        """Run one py-consul call, turning every failure into a one-line DaybookError that
        never carries a secret."""
        try:
            return request()
        except consul.ACLPermissionDenied as exc:
            raise RegistryError(self._acl_message(action, str(exc))) from None
        except BadRequest as exc:
            raise ConfigError(self._bad_request_message(action, str(exc))) from None
        except consul.ConsulException as exc:
            raise RegistryError(self._status_message(action, str(exc))) from None
        except requests.exceptions.RequestException as exc:
            raise RegistryError(self._transport_message(action, exc)) from None

    def _transport_message(self, action: str, exc: requests.exceptions.RequestException) -> str:
        where = f"Consul at {self.address}"
        reason = self._redact(_reason(exc))
        if isinstance(exc, requests.exceptions.SSLError):
            if "wrong version number" in reason or "record layer failure" in reason:
                hint = "the agent may serve plain HTTP on this port: check the scheme"
            elif "match" in reason or "mismatch" in reason:
                hint = "set CONSUL_TLS_SERVER_NAME to a name the certificate carries"
            else:
                hint = "check CONSUL_CACERT or CONSUL_CAPATH, and the client certificate"
            return f"TLS with {where} failed: {reason} ({hint})"
        if isinstance(exc, requests.exceptions.ConnectTimeout):
            return f"cannot reach {where}: connection timed out"
        if isinstance(exc, requests.exceptions.ReadTimeout):
            return f"{where} did not answer in time while trying to {action}"
        return f"cannot reach {where}: {reason}"

    def _acl_message(self, action: str, body: str) -> str:
        detail = self._redact(body)
        access = "read" if action.startswith(("read", "watch")) else "write"
        if "ACL not found" in detail:
            hint = "the ACL token is unknown to Consul; check CONSUL_HTTP_TOKEN"
        elif self._token is None:
            hint = f"no ACL token is set; set CONSUL_HTTP_TOKEN to one with key:{access}"
        else:
            hint = f"the ACL token lacks key:{access} on {self._acl_prefix(action)!r}"
        return f"Consul at {self.address} refused to {action}: {hint} ({detail})"

    def _bad_request_message(self, action: str, message: str) -> str:
        """A 400 is Consul refusing the request itself: the same request will never pass,
        so it is a configuration error, not a fault to retry."""
        detail = self._redact(message.removeprefix("400 "))
        if "Consul Enterprise feature" in detail:
            hint = "namespaces and partitions (ns=, partition=, CONSUL_NAMESPACE, "
            hint += "CONSUL_PARTITION) need Consul Enterprise"
        else:
            hint = "check the registry URL's key prefix, dc=, ns=, partition= and wait="
        return (
            f"Consul at {self.address} refused the request to {action} as invalid "
            f"(HTTP 400: {detail}); retrying will not help: {hint}"
        )

    def _acl_prefix(self, action: str) -> str:
        """The prefix an action's ACL rule must cover: the pins' for a pin, the mappings'
        for a pattern, the key itself for anything else (`read KEY`, `write KEY`...)."""
        subject = action.partition(" ")[2]
        for prefix in (self._pins_prefix, self._prefix):
            if subject.startswith(prefix):
                return prefix
        return subject

    def _status_message(self, action: str, message: str) -> str:
        match = _STATUS_RE.fullmatch(message)
        if match is None:
            detail = self._redact(message)
            return f"Consul at {self.address} gave an unusable answer to {action}: {detail}"
        status, detail = int(match[1]), self._redact(match[2])
        where = f"Consul at {self.address}"
        if status == 413:
            return f"value too large for {where} while trying to {action}: {detail}"
        if status == 429:
            return f"{where} is rate-limiting requests (HTTP 429) while trying to {action}"
        if _KEY_RULE_1_21_5 in detail:
            return (
                f"{where} refused the key while trying to {action}: Consul 1.21.5 rejects '*' "
                "and other characters in KV keys (hashicorp/consul#22682); upgrade Consul to "
                "1.21.6 or later, or on 1.21.5 set disable_http_unprintable_char_filter = "
                f"true in the agents' configuration (HTTP {status}: {detail})"
            )
        if status >= 500:
            return f"{where} could not {action} (HTTP {status}: {detail}); usually transient"
        return f"{where} answered HTTP {status} while trying to {action}: {detail}"

    def _redact(self, text: str) -> str:
        """One line, bounded, and never a secret, whatever Consul or a proxy echoes back."""
        line = " ".join(text.split())
        for secret in self._endpoint.secrets:
            line = line.replace(secret, "<secret>")
        if len(line) > _MAX_DETAIL_CHARS:
            line = line[:_MAX_DETAIL_CHARS] + "..."
        return line or "no details"


def _answer_into(
    answers: queue.Queue[tuple[str, _Listing | Exception]],
    which: str,
    query: Callable[[], _Listing],
) -> None:
    try:
        answers.put((which, query()))
    except Exception as exc:  # raised on the watching thread, if it still listens
        answers.put((which, exc))


def _first_answer(
    answers: queue.Queue[tuple[str, _Listing | Exception]],
) -> dict[str, _Listing]:
    # No timeout of our own: each query's HTTP timeout covers its wait and the jitter.
    which, answer = answers.get()
    if isinstance(answer, Exception):
        raise answer
    return {which: answer}


def _keep_headers(response: Any) -> tuple[Mapping[str, str], tuple[str, Any]]:
    """py-consul's own KV list callback (status errors, base64), keeping the headers too.
    JSON of another shape than a KV listing (a proxy's, a server's that is not Consul) is
    an answer Consul would not give: ConsulException, told as an unusable answer."""
    try:
        index, entries = _LIST_CALLBACK(response)
    except (AttributeError, TypeError, KeyError, ValueError) as exc:  # binascii.Error too
        raise consul.ConsulException(f"not a KV listing ({type(exc).__name__}: {exc})") from None
    if entries is not None and not (
        isinstance(entries, list)
        and all(isinstance(e, dict) and isinstance(e.get("Key"), str) for e in entries)
    ):
        raise consul.ConsulException("not a KV listing (entries without a key)")
    return response.headers, (index, entries)


def _services_of(entry: Mapping[str, Any], key: str) -> tuple[str, ...]:
    value = entry.get("Value") or b""
    text = value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)
    return parse_services(text, context=f"Consul key {key!r}")


def _check_prefix(prefix: str) -> str:
    prefix = prefix.lstrip("/")
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    segments = prefix.split("/")[:-1]
    if not prefix or any(s in ("", ".", "..") or s != s.strip() for s in segments):
        raise ConfigError(f"invalid Consul key prefix {prefix!r}: use segments like daybook/hosts/")
    return prefix


def _reason(exc: requests.exceptions.RequestException) -> str:
    """The innermost cause of a requests error, without urllib3's pool and object noise."""
    cause: object = exc.args[0] if exc.args else exc
    cause = getattr(cause, "reason", cause)
    text = " ".join(str(cause).split())
    # urllib3 prefixes "HTTPConnection(host=..., port=...): " to socket errors.
    _, sep, tail = text.partition("): ")
    if sep and text.startswith(("HTTPConnection", "HTTPSConnection", "<")):
        text = tail
    return text or type(exc).__name__  # bounded by _redact, after any secret is gone
