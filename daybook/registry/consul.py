"""The Consul registry: one KV key per host pattern under a prefix, services as `a,b,c`."""

from __future__ import annotations

import logging
import os
import random
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import consul
import requests
from consul.callback import CB

from daybook.errors import ConfigError, ConflictError, RegistryError
from daybook.model.mappings import MappingTable, format_services, parse_services, unique_services
from daybook.model.patterns import check_pattern, is_valid_pattern
from daybook.registry.base import DEFAULT_KEY_PREFIX, ServicesUpdate, Snapshot

log = logging.getLogger(__name__)

DEFAULT_ADDRESS = "127.0.0.1:8500"
DEFAULT_PORT = 8500
# Connect and non-blocking answer timeout. py-consul adds a blocking query's wait and its
# wait/16 of jitter on top, so a held watch is never cut short by our own client.
DEFAULT_TIMEOUT_S = 10.0
# Check-and-set attempts before update() gives up, and the cap of the jittered backoff.
MAX_CAS_ATTEMPTS = 20
MAX_CAS_BACKOFF_S = 0.2
_MAX_DETAIL_CHARS = 300
_STATUS_RE = re.compile(r"(\d{3}) (.*)", re.DOTALL)
_TRUE = {"1", "t", "true"}  # Go's strconv.ParseBool, as Consul's own tools read the env
_FALSE = {"0", "f", "false"}

T = TypeVar("T")

_LIST_CALLBACK = CB.json(index=True, decode="Value")


@dataclass(frozen=True)
class ConsulEndpoint:
    """Where and how to reach the agent, resolved once from arguments and CONSUL_* variables."""

    scheme: str
    host: str
    port: int
    # requests' `verify`: True, False, or a CA bundle file or directory.
    verify: bool | str
    cert: tuple[str, str] | None
    # Kept out of repr so that logging an endpoint can never leak the secret.
    token: str | None = field(repr=False)

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

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

        HTTPS is used if `https`, CONSUL_HTTP_SSL or an `https://` address asks for it. The
        token is `token`, else the file named by CONSUL_HTTP_TOKEN_FILE, else
        CONSUL_HTTP_TOKEN. CONSUL_CACERT/CONSUL_CAPATH, CONSUL_HTTP_SSL_VERIFY and
        CONSUL_CLIENT_CERT/CONSUL_CLIENT_KEY configure TLS.
        """
        env = os.environ if env is None else env
        raw = address or env.get("CONSUL_HTTP_ADDR") or DEFAULT_ADDRESS
        use_https = https or _env_bool(env, "CONSUL_HTTP_SSL")
        scheme_part, sep, rest = raw.partition("://")
        if sep:
            scheme = scheme_part.lower()
            if scheme == "unix":
                raise ConfigError(f"Consul address {raw!r}: unix sockets are not supported")
            if scheme not in ("http", "https"):
                raise ConfigError(f"Consul address {raw!r}: unknown scheme {scheme_part!r}")
            # As in Consul's client, an explicit request for TLS is never reverted to http.
            use_https = use_https or scheme == "https"
            raw = rest
        try:
            parts = urlsplit("//" + raw.rstrip("/"))
            port = parts.port or DEFAULT_PORT
        except ValueError:
            parts, port = None, 0
        if parts is None or not parts.hostname or parts.path or parts.query or parts.username:
            raise ConfigError(f"Consul address {raw!r} is not HOST[:PORT]")

        verify: bool | str = True
        if env.get("CONSUL_HTTP_SSL_VERIFY") and not _env_bool(env, "CONSUL_HTTP_SSL_VERIFY"):
            verify = False
        ca = env.get("CONSUL_CACERT") or env.get("CONSUL_CAPATH")
        if ca and verify:
            verify = ca
        cert: tuple[str, str] | None = None
        client_cert, client_key = env.get("CONSUL_CLIENT_CERT"), env.get("CONSUL_CLIENT_KEY")
        if client_cert or client_key:
            if not (client_cert and client_key):
                raise ConfigError("set both CONSUL_CLIENT_CERT and CONSUL_CLIENT_KEY, or neither")
            cert = (client_cert, client_key)

        if token is None:
            token = _token_from_file(env.get("CONSUL_HTTP_TOKEN_FILE"))
        if token is None:
            token = env.get("CONSUL_HTTP_TOKEN") or None
        return cls(
            scheme="https" if use_https else "http",
            host=parts.hostname,
            port=port,
            verify=verify,
            cert=cert,
            token=token or None,
        )


def _env_bool(env: Mapping[str, str], name: str) -> bool:
    value = env.get(name, "").strip().lower()
    if value in _TRUE:
        return True
    if value and value not in _FALSE:
        raise ConfigError(f"{name}={env[name]!r} is not a boolean (use true or false)")
    return False


def _token_from_file(path: str | None) -> str | None:
    if not path:
        return None
    try:
        token = Path(path).read_text().strip() or None
        mode = Path(path).stat().st_mode
    except OSError as exc:
        raise ConfigError(f"cannot read CONSUL_HTTP_TOKEN_FILE {path}: {exc.strerror}") from None
    if mode & 0o004:
        log.warning(
            "CONSUL_HTTP_TOKEN_FILE %s is readable by every user, and it holds a secret: "
            "run `chmod o-r %s`",
            path,
            path,
        )
    return token


class ConsulRegistry:
    """Mappings in Consul KV: key `PREFIX + pattern`, value the services joined by commas.

    Every write is a check-and-set on the key's ModifyIndex, so concurrent operators never
    lose each other's updates. Reads take the whole prefix in one recursive GET, and
    `watch` is a blocking query on it.
    """

    def __init__(
        self,
        address: str | None = None,
        key_prefix: str = DEFAULT_KEY_PREFIX,
        https: bool = False,
        *,
        token: str | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        self._endpoint = ConsulEndpoint.from_env(address, https=https, token=token)
        self._prefix = _check_prefix(key_prefix)
        self._token = self._endpoint.token
        self._client: Any = consul.Consul(
            host=f"[{self._endpoint.host}]" if ":" in self._endpoint.host else self._endpoint.host,
            port=self._endpoint.port,
            scheme=self._endpoint.scheme,
            verify=self._endpoint.verify,
            cert=self._endpoint.cert,
            # py-consul takes the timeout here only: per call it raises TypeError.
            connections_timeout=timeout_s,
        )
        # py-consul lets CONSUL_HTTP_TOKEN override an explicit token; the token is resolved
        # above and sent explicitly on every call instead.
        self._client.token = None
        # Parsed values by key and ModifyIndex: an unchanged key is neither re-parsed nor
        # warned about again on every watch round.
        self._parsed: dict[str, tuple[int, tuple[str, ...] | None]] = {}

    @property
    def url(self) -> str:
        scheme = "consul+https" if self._endpoint.scheme == "https" else "consul"
        return f"{scheme}://{self._endpoint.address}/{self._prefix}"

    @property
    def address(self) -> str:
        return self._endpoint.address

    @property
    def key_prefix(self) -> str:
        return self._prefix

    def read(self) -> Snapshot:
        """The whole table from one recursive GET; a missing prefix is an empty table."""
        return self._list(f"read {self._prefix}", [])

    def watch(self, index: int, timeout_s: float) -> Snapshot:
        """A blocking query on the prefix: returns when Consul's index passes `index`, or
        after about `timeout_s` (plus up to 1/16 of Consul's jitter) with the same data.

        `index` 0 answers at once. The returned index can be *lower* than `index`, after a
        Consul snapshot restore or when delete tombstones are reaped: callers must then
        reset their index to 0 (Consul's rule), and always compare data, not indexes.
        """
        if index <= 0:
            return self.read()
        # Go duration in ms, at least 1: Consul takes `wait=0` as its 5-minute default.
        wait = f"{max(1, int(timeout_s * 1000))}ms"
        return self._list(f"watch {self._prefix}", [("index", str(index)), ("wait", wait)])

    def _list(self, action: str, params: list[tuple[str, str]]) -> Snapshot:
        # py-consul's kv.get drops the response headers, and the ACL-filtering header is the
        # only sign of a partial table; its HTTP client still sizes the timeout from `wait`.
        headers, (index, entries) = self._call(
            action,
            partial(
                self._client.http.get,
                _keep_headers,
                f"/v1/kv/{self._prefix}",
                params=[("recurse", "1"), *params],
                headers=self._client.prepare_headers(self._token),
            ),
        )
        if headers.get("X-Consul-Results-Filtered-By-ACLs", "").lower() == "true":
            # Serving part of the table would send hosts to less specific patterns.
            raise RegistryError(
                f"Consul at {self.address} hid some keys under {self._prefix!r} from the ACL "
                "token; it needs key:read on the whole prefix (check CONSUL_HTTP_TOKEN)"
            )
        if entries is None:
            # Recursive reads are filtered, not refused, so without read rights an empty
            # answer looks like an empty table; a single-key read is refused outright.
            self._call(action, partial(self._client.kv.get, self._prefix, token=self._token))
        return self._snapshot(index, entries)

    def update(self, pattern: str, change: ServicesUpdate) -> tuple[str, ...]:
        """Read the key, apply `change`, write back with check-and-set; retry on conflict.

        An empty result deletes the key (also by check-and-set). Raises ConflictError after
        MAX_CAS_ATTEMPTS lost races, InputError for an invalid pattern or service name.
        """
        check_pattern(pattern)  # a valid pattern has no `/`, so it is exactly one key
        key = self._prefix + pattern
        kv = self._client.kv
        for attempt in range(MAX_CAS_ATTEMPTS):
            _, entry = self._call(f"read {key}", partial(kv.get, key, token=self._token))
            modify_index = int(entry["ModifyIndex"]) if entry else 0
            current = _services_of(entry, key) if entry else ()
            wanted = unique_services(change(current))
            if wanted == current:
                return current
            if not wanted and entry is None:
                return ()
            if wanted:
                value = format_services(wanted)
                write = partial(kv.put, key, value, cas=modify_index, token=self._token)
                written = self._call(f"write {key}", write)
            else:
                delete = partial(kv.delete, key, cas=modify_index, token=self._token)
                written = self._call(f"delete {key}", delete)
            if written is True:
                return wanted
            log.debug("check-and-set on %s lost a race (attempt %d)", key, attempt + 1)
            # Jittered and growing, so writers that collided do not collide again in step.
            time.sleep(random.uniform(0, min(MAX_CAS_BACKOFF_S, 0.005 * 2**attempt)))
        raise ConflictError(
            f"gave up updating {pattern!r} in Consul at {self.address}: "
            f"{MAX_CAS_ATTEMPTS} concurrent writes won the check-and-set first"
        )

    def close(self) -> None:
        # py-consul's own close() is a no-op and leaves the pooled connections open.
        self._client.http.session.close()

    def _snapshot(self, raw_index: Any, entries: list[dict[str, Any]] | None) -> Snapshot:
        try:
            index = int(raw_index)
        except (TypeError, ValueError):
            raise RegistryError(
                f"Consul at {self.address} sent an invalid X-Consul-Index {raw_index!r}"
            ) from None
        mappings: MappingTable = {}
        owners: dict[str, str] = {}
        parsed: dict[str, tuple[int, tuple[str, ...] | None]] = {}
        for entry in entries or ():
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
        return Snapshot(mappings=mappings, index=max(1, index))

    def _parse_entry(self, key: str, entry: Mapping[str, Any]) -> tuple[str, ...] | None:
        pattern = key[len(self._prefix) :]
        if not pattern:
            return None  # the prefix's own "folder" key, as the Consul UI creates
        if "/" in pattern or not is_valid_pattern(pattern):
            log.warning("skipping Consul key %r: %r is not a valid host pattern", key, pattern)
            return None
        return _services_of(entry, key) or None

    def _call(self, action: str, request: Callable[[], T]) -> T:
        """Run one py-consul call, turning every failure into a one-line RegistryError."""
        try:
            return request()
        except consul.ACLPermissionDenied as exc:
            raise RegistryError(self._acl_message(action, str(exc))) from None
        except consul.ConsulException as exc:
            raise RegistryError(self._status_message(action, str(exc))) from None
        except requests.exceptions.SSLError as exc:
            raise RegistryError(
                f"TLS with Consul at {self.address} failed: {_reason(exc)} "
                "(check CONSUL_CACERT and the address scheme)"
            ) from None
        except requests.exceptions.ConnectTimeout:
            raise RegistryError(
                f"cannot reach Consul at {self.address}: connection timed out"
            ) from None
        except requests.exceptions.ReadTimeout:
            raise RegistryError(
                f"Consul at {self.address} did not answer in time while trying to {action}"
            ) from None
        except requests.exceptions.RequestException as exc:
            raise RegistryError(f"cannot reach Consul at {self.address}: {_reason(exc)}") from None

    def _acl_message(self, action: str, body: str) -> str:
        detail = self._redact(body)
        access = "read" if action.startswith(("read", "watch")) else "write"
        if "ACL not found" in detail:
            hint = "the ACL token is unknown to Consul; check CONSUL_HTTP_TOKEN"
        elif self._token is None:
            hint = f"no ACL token is set; set CONSUL_HTTP_TOKEN to one with key:{access}"
        else:
            hint = f"the ACL token lacks key:{access} on {self._prefix!r}"
        return f"Consul at {self.address} refused to {action}: {hint} ({detail})"

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
        if status >= 500:
            return f"{where} could not {action} (HTTP {status}: {detail}); usually transient"
        if status == 400:
            return f"{where} rejected the request to {action} as invalid: {detail}"
        return f"{where} answered HTTP {status} while trying to {action}: {detail}"

    def _redact(self, text: str) -> str:
        """One line, bounded, and never the token, whatever Consul or a proxy echoes back."""
        line = " ".join(text.split())
        if self._token:
            line = line.replace(self._token, "<token>")
        if len(line) > _MAX_DETAIL_CHARS:
            line = line[:_MAX_DETAIL_CHARS] + "..."
        return line or "no details"


def _keep_headers(response: Any) -> tuple[Mapping[str, str], tuple[str, Any]]:
    """py-consul's own KV list callback (status errors, base64), keeping the headers too."""
    return response.headers, _LIST_CALLBACK(response)


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
    return text[:_MAX_DETAIL_CHARS] or type(exc).__name__
