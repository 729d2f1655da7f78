"""A Consul-KV-compatible HTTP server for tests and the bench: the KV and txn API plus
fault hooks."""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import random
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal
from urllib.parse import parse_qsl, unquote, urlencode

FaultKind = Literal["no_leader", "rate_limited", "drop", "delay"]
AclPolicy = Literal["read", "write", "deny"]

# Consul's defaults (agent options max_query_time, default_query_time, kv_max_value_size).
CONSUL_MAX_QUERY_TIME_S = 600.0
CONSUL_DEFAULT_QUERY_TIME_S = 300.0
MAX_VALUE_BYTES = 512 * 1024
MAX_TXN_OPS = 64
# structs.JitterFraction: a blocking query waits up to timeout/16 longer.
JITTER_FRACTION = 16
DATACENTER = "dc1"
# The first raft entries of a real cluster are internal (raft config, autopilot, CA...), so
# user-visible KV indexes never start at 1; the empty store still answers index 1.
INITIAL_RAFT_INDEX = 10
MAX_UINT64 = 2**64 - 1

_KV_METHODS = ("GET", "PUT", "DELETE")
# The SecretID and AccessorID Consul gives its built-in anonymous token.
_ANONYMOUS_SECRET = "anonymous"
_ANONYMOUS_ACCESSOR = "00000000-0000-0000-0000-000000000002"
_ANONYMOUS_SUFFIX = (
    " The anonymous token is used implicitly when a request does not specify a token."
)
_GO_DURATION_RE = re.compile(r"(?:(?:\d+\.?\d*|\.\d+)(?:ns|us|µs|μs|ms|s|m|h))+")
_GO_DURATION_PART_RE = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_DURATION_UNITS_S = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_BAD_ESCAPE_RE = re.compile(r"%(?![0-9A-Fa-f]{2})")


def parse_go_duration(text: str) -> float | None:
    """Seconds for a Go `time.ParseDuration` string, or None where Go would refuse it."""
    body = text
    negative = False
    if body[:1] in ("+", "-"):
        negative = body[0] == "-"
        body = body[1:]
    if body == "0":
        return 0.0
    if not _GO_DURATION_RE.fullmatch(body):
        return None
    seconds = sum(
        float(number) * _DURATION_UNITS_S[unit]
        for number, unit in _GO_DURATION_PART_RE.findall(body)
    )
    return -seconds if negative else seconds


def _parse_uint64(text: str) -> int | None:
    """Go's strconv.ParseUint(text, 10, 64): digits only, no sign, at most 2**64-1."""
    if not text.isascii() or not text.isdigit():
        return None
    value = int(text)
    return value if value <= MAX_UINT64 else None


def _go_quote(text: str) -> str:
    """Approximately Go's %q, enough for the messages the double produces."""
    return json.dumps(text, ensure_ascii=False)


def _go_json(obj: object, *, pretty: bool = False) -> bytes:
    """JSON the way Go's encoding/json writes it: compact, and <, > and & escaped."""
    if pretty:
        text = json.dumps(obj, indent=4, ensure_ascii=False) + "\n"
    else:
        text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
    for char, escaped in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026")):
        text = text.replace(char, escaped)
    return text.encode()


@dataclass(frozen=True)
class KVEntry:
    """One stored key, as Consul's DirEntry."""

    key: str
    value: bytes
    flags: int
    create_index: int
    modify_index: int
    lock_index: int = 0

    def to_json(self, *, with_value: bool = True) -> dict[str, object]:
        # An empty PUT stores a nil []byte, which Go encodes as null; Session is omitempty.
        value = base64.b64encode(self.value).decode() if with_value and self.value else None
        return {
            "LockIndex": self.lock_index,
            "Key": self.key,
            "Flags": self.flags,
            "Value": value,
            "CreateIndex": self.create_index,
            "ModifyIndex": self.modify_index,
        }


@dataclass
class LoggedRequest:
    """One request as the double received it; `status` is None when no answer was sent."""

    method: str
    target: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    status: int | None = None

    def header(self, name: str) -> str | None:
        wanted = name.lower()
        for key, value in self.headers.items():
            if key.lower() == wanted:
                return value
        return None


@dataclass(frozen=True)
class AclToken:
    """A token in the double's ACL table: exact-key and key-prefix rules, as in a policy."""

    secret_id: str
    accessor_id: str
    key_prefix: Mapping[str, AclPolicy] = field(default_factory=dict)
    key: Mapping[str, AclPolicy] = field(default_factory=dict)

    @property
    def is_anonymous(self) -> bool:
        return self.secret_id == _ANONYMOUS_SECRET

    def _rule_for(self, name: str) -> AclPolicy | None:
        if name in self.key:
            return self.key[name]
        best: str | None = None
        for prefix in self.key_prefix:
            if name.startswith(prefix) and (best is None or len(prefix) > len(best)):
                best = prefix
        return None if best is None else self.key_prefix[best]

    def allows(self, name: str, access: Literal["read", "write"], default: AclPolicy) -> bool:
        rule = self._rule_for(name)
        if rule is None:
            rule = default
        return rule == "write" or (rule == "read" and access == "read")

    def allows_write_prefix(self, prefix: str, default: AclPolicy) -> bool:
        """Consul's KeyWritePrefix: write on the prefix and on every rule beneath it."""
        for rules in (self.key_prefix, self.key):
            for name, rule in rules.items():
                if name.startswith(prefix) and rule != "write":
                    return False
        return self.allows(prefix, "write", default)

    def denial(self, access: str, name: str) -> str:
        who = (
            "anonymous token"
            if self.is_anonymous
            else f"token with AccessorID '{self.accessor_id}'"
        )
        message = f"Permission denied: {who} lacks permission 'key:{access}' on {_go_quote(name)}"
        if self.is_anonymous:
            return message + "." + _ANONYMOUS_SUFFIX
        return message


@dataclass
class _Reply:
    status: int
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)
    # Set on answers that carry the index headers (200/404 reads).
    index: int | None = None
    # A single-key read that found nothing: blocking keeps waiting for that key (ErrNotFound).
    not_found: bool = False
    drop: bool = False


def _text(status: int, message: str, headers: list[tuple[str, str]] | None = None) -> _Reply:
    return _Reply(
        status,
        message.encode(),
        [("Content-Type", "text/plain; charset=utf-8"), *(headers or [])],
    )


def _json_reply(status: int, obj: object, *, pretty: bool = False) -> _Reply:
    return _Reply(status, _go_json(obj, pretty=pretty), [("Content-Type", "application/json")])


def _read_reply(obj: object, headers: list[tuple[str, str]], index: int, *, pretty: bool) -> _Reply:
    reply = _json_reply(200, obj, pretty=pretty)
    reply.headers.extend(headers)
    reply.index = index
    return reply


@dataclass(frozen=True)
class _Query:
    """The query string, read the way Go's url.Values is: flags are presence-based."""

    params: dict[str, list[str]]

    @classmethod
    def parse(cls, raw: str) -> _Query:
        params: dict[str, list[str]] = {}
        for name, value in parse_qsl(raw, keep_blank_values=True):
            params.setdefault(name, []).append(value)
        return cls(params)

    def has(self, name: str) -> bool:
        return name in self.params

    def get(self, name: str) -> str:
        values = self.params.get(name)
        return values[0] if values else ""

    def encode(self) -> str:
        # url.Values.Encode sorts by key.
        return urlencode(sorted((k, v) for k, values in self.params.items() for v in values))


@dataclass(frozen=True)
class _ReadOptions:
    min_index: int
    wait_s: float | None
    consistency: str


class _Watch:
    """A blocked query's interest: fired by any write that changes a key it matches."""

    def __init__(self, matches: Callable[[str], bool]) -> None:
        self.matches = matches
        self.fired = False


class _Store:
    """The KV table, the tombstone graveyard and their table indexes."""

    def __init__(self) -> None:
        self.entries: dict[str, KVEntry] = {}
        self.tombstones: dict[str, int] = {}
        self.kvs_index = 0
        self.tombstones_index = 0
        self.raft_index = INITIAL_RAFT_INDEX

    def copy(self) -> _Store:
        other = _Store()
        other.entries = dict(self.entries)
        other.tombstones = dict(self.tombstones)
        other.kvs_index = self.kvs_index
        other.tombstones_index = self.tombstones_index
        other.raft_index = self.raft_index
        return other

    @property
    def table_index(self) -> int:
        return max(self.kvs_index, self.tombstones_index)

    def list_index(self, prefix: str) -> int:
        if prefix == "":
            return self.table_index
        live = max(
            (e.modify_index for k, e in self.entries.items() if k.startswith(prefix)), default=0
        )
        dead = max((i for k, i in self.tombstones.items() if k.startswith(prefix)), default=0)
        return max(live, dead) or self.table_index

    def listing(self, prefix: str) -> list[KVEntry]:
        return [self.entries[k] for k in sorted(self.entries) if k.startswith(prefix)]

    # Each writer returns the keys it changed, so blocked queries can tell if they care.

    def put(self, idx: int, key: str, value: bytes, flags: int) -> tuple[KVEntry, set[str]]:
        existing = self.entries.get(key)
        if existing is not None and existing.value == value and existing.flags == flags:
            # Since Consul 1.6 an identical write changes nothing and wakes nobody.
            return existing, set()
        create = existing.create_index if existing is not None else idx
        entry = KVEntry(key, value, flags, create, idx, existing.lock_index if existing else 0)
        self.entries[key] = entry
        self.kvs_index = idx
        return entry, {key}

    def delete(self, idx: int, key: str) -> set[str]:
        if self.entries.pop(key, None) is None:
            return set()
        self.tombstones[key] = idx
        self.tombstones_index = idx
        self.kvs_index = idx
        return {key}

    def delete_tree(self, idx: int, prefix: str) -> set[str]:
        doomed = {k for k in self.entries if k.startswith(prefix)}
        if not doomed:
            return set()
        for key in doomed:
            del self.entries[key]
        # One tombstone, keyed by the deleted prefix, as Consul's graveyard does.
        self.tombstones[prefix] = idx
        self.tombstones_index = idx
        self.kvs_index = idx
        return doomed


class ConsulServer:
    """A Consul agent's KV and txn HTTP API on 127.0.0.1, with test hooks.

    Query-time settings, jitter and index gaps are plain attributes read per request, so a
    test may change them at any time. ACLs are off (every token ignored) until
    `enable_acls()`.
    """

    def __init__(
        self,
        *,
        max_query_time_s: float = CONSUL_MAX_QUERY_TIME_S,
        default_query_time_s: float = CONSUL_DEFAULT_QUERY_TIME_S,
        jitter: bool = True,
        random_index_gaps: bool = False,
        max_value_bytes: int = MAX_VALUE_BYTES,
    ) -> None:
        self.max_query_time_s = max_query_time_s
        self.default_query_time_s = default_query_time_s
        self.jitter = jitter
        self.random_index_gaps = random_index_gaps
        self.max_value_bytes = max_value_bytes
        self._cond = threading.Condition(threading.RLock())
        self._store = _Store()
        self._watches: list[_Watch] = []
        self._blocked = 0
        self._epoch = 0
        self._stopping = False
        self._faults: list[tuple[FaultKind, float]] = []
        self._log: list[LoggedRequest] = []
        # The rule for keys no token rule covers; None while ACLs are off.
        self._acl_default: AclPolicy | None = None
        self._acl_policy_name = "allow"
        self._tokens: dict[str, AclToken] = {}
        self._connections: set[socket.socket] = set()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> ConsulServer:
        httpd = _HTTPServer(("127.0.0.1", 0), _Handler)
        httpd.double = self
        self._httpd = httpd
        self._thread = threading.Thread(
            # A short poll keeps stop() (once per test) quick.
            target=httpd.serve_forever,
            kwargs={"poll_interval": 0.01},
            name="consul-double",
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._httpd is None:
            return
        self._httpd.shutdown()
        self._close_connections()
        self._httpd.server_close()  # joins the handler threads
        if self._thread is not None:
            self._thread.join()
        self._httpd = None

    def __enter__(self) -> ConsulServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def host(self) -> str:
        return "127.0.0.1"

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("the Consul double is not running")
        return int(self._httpd.server_address[1])

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    # -- test hooks ------------------------------------------------------------------------

    def reap_tombstones(self) -> None:
        """Drop every tombstone, as Consul does ~15 min after a delete: prefix indexes can fall."""
        with self._cond:
            self._store.tombstones.clear()

    def restart(self, *, keep_data: bool = False) -> None:
        """Simulate an agent restart: drop every connection; without data, indexes restart low."""
        with self._cond:
            self._epoch += 1
            if not keep_data:
                self._store = _Store()
            self._cond.notify_all()
        self._close_connections()

    def inject_fault(self, kind: FaultKind, *, count: int = 1, delay_s: float = 0.0) -> None:
        """Make the next `count` requests fail: 500 `No cluster leader`, 429, a dropped
        connection, or a `delay_s` pause before normal handling."""
        with self._cond:
            self._faults.extend([(kind, delay_s)] * count)

    def clear_faults(self) -> None:
        with self._cond:
            self._faults.clear()

    def put(self, key: str, value: str | bytes) -> int:
        """Write a key as a PUT does, but past any injected fault and ACL: a change made
        while clients see an outage. Returns the key's ModifyIndex."""
        data = value.encode() if isinstance(value, str) else value
        with self._cond:
            entry, changed = self._store.put(self._next_raft_index(), key, data, 0)
            self._notify(changed)
            return entry.modify_index

    def delete(self, key: str) -> None:
        """Delete a key as a DELETE does, past any injected fault and ACL (a tombstone stays)."""
        with self._cond:
            self._notify(self._store.delete(self._next_raft_index(), key))

    @property
    def request_log(self) -> list[LoggedRequest]:
        with self._cond:
            return list(self._log)

    def clear_request_log(self) -> None:
        with self._cond:
            self._log.clear()

    @property
    def blocked_queries(self) -> int:
        with self._cond:
            return self._blocked

    def wait_for_blocked(self, count: int = 1, timeout_s: float = 5.0) -> None:
        """Return once at least `count` blocking queries are held; TimeoutError otherwise."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._blocked >= count, timeout=timeout_s):
                raise TimeoutError(f"{self._blocked} blocked queries, expected {count}")

    @property
    def kv_index(self) -> int:
        """The whole KV table's index (max of the kvs and tombstones tables)."""
        with self._cond:
            return self._store.table_index

    @property
    def raft_index(self) -> int:
        with self._cond:
            return self._store.raft_index

    def entries(self) -> dict[str, KVEntry]:
        with self._cond:
            return dict(self._store.entries)

    def enable_acls(self, default_policy: Literal["allow", "deny"] = "deny") -> None:
        """Turn ACLs on: tokens come from `add_acl_token`, no token means `anonymous`."""
        with self._cond:
            self._acl_default = "write" if default_policy == "allow" else "deny"
            self._acl_policy_name = default_policy
            self._tokens.setdefault(
                _ANONYMOUS_SECRET, AclToken(_ANONYMOUS_SECRET, _ANONYMOUS_ACCESSOR)
            )

    def add_acl_token(
        self,
        secret_id: str,
        *,
        key_prefix: Mapping[str, AclPolicy] | None = None,
        key: Mapping[str, AclPolicy] | None = None,
        accessor_id: str | None = None,
    ) -> AclToken:
        token = AclToken(
            secret_id, accessor_id or str(uuid.uuid4()), dict(key_prefix or {}), dict(key or {})
        )
        with self._cond:
            self._tokens[secret_id] = token
        return token

    def set_anonymous_rules(
        self,
        *,
        key_prefix: Mapping[str, AclPolicy] | None = None,
        key: Mapping[str, AclPolicy] | None = None,
    ) -> None:
        """Rules for requests that send no token (none by default: everything denied)."""
        self.add_acl_token(
            _ANONYMOUS_SECRET, key_prefix=key_prefix, key=key, accessor_id=_ANONYMOUS_ACCESSOR
        )

    # -- plumbing used by the handler --------------------------------------------------------

    def _track(self, conn: socket.socket, *, add: bool) -> None:
        with self._cond:
            if add:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)

    def _close_connections(self) -> None:
        with self._cond:
            conns = list(self._connections)
        for conn in conns:
            with contextlib.suppress(OSError):  # already gone
                conn.shutdown(socket.SHUT_RDWR)

    def _log_request(self, entry: LoggedRequest) -> None:
        with self._cond:
            self._log.append(entry)

    def _take_fault(self) -> tuple[FaultKind, float] | None:
        with self._cond:
            return self._faults.pop(0) if self._faults else None

    def _pause(self, delay_s: float) -> bool:
        """Wait `delay_s`; False if a restart or shutdown came first (drop the connection)."""
        with self._cond:
            epoch = self._epoch
            self._cond.wait_for(
                lambda: self._stopping or self._epoch != epoch, timeout=max(0.0, delay_s)
            )
            return not self._stopping and self._epoch == epoch

    def _next_raft_index(self) -> int:
        step = random.randint(1, 5) if self.random_index_gaps else 1
        self._store.raft_index += step
        return self._store.raft_index

    def _notify(self, changed: set[str]) -> None:
        if not changed:
            return
        for watch in self._watches:
            if not watch.fired and any(watch.matches(key) for key in changed):
                watch.fired = True
        self._cond.notify_all()

    def _query_timeout_s(self, wait_s: float | None) -> float:
        # RPCQueryTimeout: clamp to max, default when absent or <= 0, then jitter.
        if wait_s is None or wait_s <= 0:
            timeout = self.default_query_time_s
        elif wait_s > self.max_query_time_s:
            timeout = self.max_query_time_s
        else:
            timeout = wait_s
        if self.jitter:
            timeout += random.uniform(0, timeout / JITTER_FRACTION)
        return timeout

    def _blocking(
        self, opts: _ReadOptions, run: Callable[[], _Reply], matches: Callable[[str], bool]
    ) -> _Reply:
        """blockingquery.Query: answer at once, or hold until the index passes min_index."""
        with self._cond:
            if opts.min_index == 0:
                return run()
            epoch = self._epoch
            deadline = time.monotonic() + self._query_timeout_s(opts.wait_s)
            min_index = opts.min_index
            not_found = False
            self._blocked += 1
            self._cond.notify_all()
            try:
                while True:
                    reply = run()
                    if reply.index is None:
                        return reply  # an error answers at once
                    if reply.not_found:
                        if not_found:
                            min_index = reply.index
                        not_found = True
                    if reply.index > min_index:
                        return reply
                    watch = _Watch(matches)
                    self._watches.append(watch)
                    try:
                        while not (watch.fired or self._stopping or self._epoch != epoch):
                            remaining = deadline - time.monotonic()
                            if remaining <= 0:
                                break
                            self._cond.wait(remaining)
                    finally:
                        self._watches.remove(watch)
                    if self._stopping or self._epoch != epoch:
                        return _Reply(0, drop=True)
                    if not watch.fired:
                        return run()  # timed out: the current state, maybe the same index
            finally:
                self._blocked -= 1

    def _resolve_token(self, token: str) -> AclToken | _Reply | None:
        """The caller's ACL token; None when ACLs are off; a 403 reply for an unknown token."""
        if self._acl_default is None:
            return None
        found = self._tokens.get(token or _ANONYMOUS_SECRET)
        if found is None:
            return _text(403, "ACL not found")
        return found

    def _meta_headers(self, index: int, consistency: str) -> list[tuple[str, str]]:
        return [
            ("X-Consul-Index", str(max(1, index))),
            ("X-Consul-KnownLeader", "true"),
            ("X-Consul-LastContact", "0"),
            ("X-Consul-Effective-Consistency", consistency),
        ]

    def _visible(
        self, entries: list[KVEntry], acl: AclToken | None, index: int, opts: _ReadOptions
    ) -> tuple[list[KVEntry], list[tuple[str, str]]]:
        """A listing as the token may see it, and the read headers that go with it."""
        headers = self._meta_headers(index, opts.consistency)
        if acl is None:
            return entries, headers
        default = self._acl_default or "write"
        visible = [e for e in entries if acl.allows(e.key, "read", default)]
        # Consul tells a real token that it filtered, but never the anonymous one.
        if len(visible) < len(entries) and not acl.is_anonymous:
            headers.append(("X-Consul-Results-Filtered-By-ACLs", "true"))
        return visible, headers

    # -- endpoints -------------------------------------------------------------------------

    def _read_options(self, query: _Query) -> _ReadOptions | _Reply:
        """agent/http.go parseConsistency then parseWait, in that order."""
        stale, consistent = query.has("stale"), query.has("consistent")
        if stale and consistent:
            return _text(400, "Cannot specify ?stale with ?consistent, conflicting semantics.")
        consistency = "stale" if stale else "consistent" if consistent else "leader"
        wait_s: float | None = None
        if wait := query.get("wait"):
            wait_s = parse_go_duration(wait)
            if wait_s is None:
                return _text(400, "Invalid wait time")
        min_index = 0
        if raw_index := query.get("index"):
            parsed = _parse_uint64(raw_index)
            if parsed is None:
                return _text(400, "Invalid index")
            min_index = parsed
        return _ReadOptions(min_index, wait_s, consistency)

    def handle_kv(
        self, method: str, key: str, query: _Query, *, token: str, body: bytes, length: int
    ) -> _Reply:
        opts = self._read_options(query)
        if isinstance(opts, _Reply):
            return opts
        if key:
            problem = _key_problem(key)
            if problem:
                return _text(400, problem)
        if method == "GET":
            if query.has("keys"):
                return self._kv_keys(key, query, token, opts)
            return self._kv_get(key, query, token, opts)
        if method == "PUT":
            return self._kv_put(key, query, token=token, body=body, length=length)
        return self._kv_delete(key, query, token)

    def _kv_get(self, key: str, query: _Query, token: str, opts: _ReadOptions) -> _Reply:
        recurse = query.has("recurse")
        if not recurse and key == "":
            return _text(400, "Missing key name")
        pretty = query.has("pretty")
        with self._cond:
            acl = self._resolve_token(token)
        if isinstance(acl, _Reply):
            return acl
        default = self._acl_default or "write"

        if recurse:

            def run_list() -> _Reply:
                index = self._store.list_index(key)
                entries, headers = self._visible(self._store.listing(key), acl, index, opts)
                if not entries:
                    return _Reply(404, b"", headers, index=index)
                return _read_reply([e.to_json() for e in entries], headers, index, pretty=pretty)

            return self._blocking(opts, run_list, lambda changed: changed.startswith(key))

        def run_one() -> _Reply:
            if acl is not None and not acl.allows(key, "read", default):
                return _text(403, acl.denial("read", key))
            entry = self._store.entries.get(key)
            if entry is None:
                index = self._store.table_index
                headers = self._meta_headers(index, opts.consistency)
                return _Reply(404, b"", headers, index=index, not_found=True)
            headers = self._meta_headers(entry.modify_index, opts.consistency)
            if query.has("raw"):
                return _Reply(
                    200,
                    entry.value,
                    [
                        *headers,
                        ("Content-Type", "text/plain"),
                        ("X-Content-Type-Options", "nosniff"),
                        ("Content-Security-Policy", "sandbox"),
                    ],
                    index=entry.modify_index,
                )
            return _read_reply([entry.to_json()], headers, entry.modify_index, pretty=pretty)

        return self._blocking(opts, run_one, lambda changed: changed == key)

    def _kv_keys(self, prefix: str, query: _Query, token: str, opts: _ReadOptions) -> _Reply:
        separator = query.get("separator") if query.has("separator") else query.get("seperator")
        with self._cond:
            acl = self._resolve_token(token)
        if isinstance(acl, _Reply):
            return acl

        def run() -> _Reply:
            index = self._store.list_index(prefix)
            entries, headers = self._visible(self._store.listing(prefix), acl, index, opts)
            # Keys past the separator fold into one "directory", listed once, in order.
            keys: dict[str, None] = {}
            for entry in entries:
                cut = entry.key.find(separator, len(prefix)) if separator else -1
                keys[entry.key if cut < 0 else entry.key[: cut + len(separator)]] = None
            # The root answers [] rather than 404.
            if not keys and prefix != "":
                return _Reply(404, b"", headers, index=index)
            return _read_reply(list(keys), headers, index, pretty=query.has("pretty"))

        return self._blocking(opts, run, lambda changed: changed.startswith(prefix))

    def _kv_put(self, key: str, query: _Query, *, token: str, body: bytes, length: int) -> _Reply:
        if key == "":
            return _text(400, "Missing key name")
        if conflict := _conflicting_flags(query, ("cas", "acquire", "release")):
            return conflict
        flags = 0
        if query.has("flags"):
            parsed = _parse_uint64(query.get("flags"))
            if parsed is None:
                return _text(
                    500,
                    f"strconv.ParseUint: parsing {_go_quote(query.get('flags'))}: invalid syntax",
                )
            flags = parsed
        cas: int | None = None
        if query.has("cas"):
            cas = _parse_uint64(query.get("cas"))
            if cas is None:
                return _text(
                    500, f"strconv.ParseUint: parsing {_go_quote(query.get('cas'))}: invalid syntax"
                )
        if length > self.max_value_bytes:
            return _text(
                413,
                f"Request body({length} bytes) too large, max size: {self.max_value_bytes} bytes. "
                "See https://developer.hashicorp.com/docs/agent/config/config-files"
                "#kv_max_value_size.",
            )
        with self._cond:
            acl = self._resolve_token(token)
            if isinstance(acl, _Reply):
                return acl
            if acl is not None and not acl.allows(key, "write", self._acl_default or "write"):
                return _text(403, acl.denial("write", key))
            if query.has("acquire") or query.has("release"):
                session = query.get("acquire") or query.get("release")
                # The double has no sessions, so every session is unknown, as in kvsLockTxn.
                self._next_raft_index()
                return _text(500, f"invalid session {_go_quote(session)}")
            idx = self._next_raft_index()
            existing = self._store.entries.get(key)
            if cas is not None and not _cas_matches(existing, cas):
                return _json_reply(200, False)
            _, changed = self._store.put(idx, key, body, flags)
            self._notify(changed)
        return _json_reply(200, True)

    def _kv_delete(self, key: str, query: _Query, token: str) -> _Reply:
        if conflict := _conflicting_flags(query, ("recurse", "cas")):
            return conflict
        recurse = query.has("recurse")
        if not recurse and key == "":
            return _text(400, "Missing key name")
        cas: int | None = None
        if query.has("cas"):
            cas = _parse_uint64(query.get("cas"))
            if cas is None:
                return _text(
                    500, f"strconv.ParseUint: parsing {_go_quote(query.get('cas'))}: invalid syntax"
                )
        with self._cond:
            acl = self._resolve_token(token)
            if isinstance(acl, _Reply):
                return acl
            default = self._acl_default or "write"
            if acl is not None:
                allowed = (
                    acl.allows_write_prefix(key, default)
                    if recurse
                    else acl.allows(key, "write", default)
                )
                if not allowed:
                    return _text(403, acl.denial("write", key))
            idx = self._next_raft_index()
            if recurse:
                self._notify(self._store.delete_tree(idx, key))
                return _json_reply(200, True)
            existing = self._store.entries.get(key)
            if cas is not None and existing is not None and existing.modify_index != cas:
                return _json_reply(200, False)
            # kvsDeleteCASTxn answers true for a missing key, whatever the index.
            self._notify(self._store.delete(idx, key))
        return _json_reply(200, True)

    def handle_txn(self, query: _Query, *, token: str, body: bytes, length: int) -> _Reply:
        max_len = max(MAX_VALUE_BYTES, self.max_value_bytes)
        if length > max_len:
            return _text(413, f"Request body too large, max size: {max_len} bytes")
        try:
            raw_ops = json.loads(body)
            if not isinstance(raw_ops, list):
                raise ValueError("expected a JSON array of operations")
            ops = [_TxnOp.from_json(raw) for raw in raw_ops]
        except (ValueError, TypeError, binascii.Error) as exc:
            return _text(400, f"Failed to parse body: {exc}")
        if len(ops) > MAX_TXN_OPS:
            return _text(
                413, f"Transaction contains too many operations ({len(ops)} > {MAX_TXN_OPS})"
            )
        for op in ops:
            if len(op.value) > self.max_value_bytes:
                return _text(
                    413,
                    f"Value for key {_go_quote(op.key)} is too large "
                    f"({len(op.value)} > {self.max_value_bytes} bytes)",
                )
        writes = sum(op.is_write for op in ops)
        opts = self._read_options(query) if writes == 0 else None
        if isinstance(opts, _Reply):
            return opts
        with self._cond:
            acl = self._resolve_token(token)
            if isinstance(acl, _Reply):
                return acl
            default = self._acl_default or "write"
            errors: list[dict[str, object]] = []
            if acl is not None:
                for i, op in enumerate(ops):
                    if not op.permitted(acl, default):
                        errors.append({"OpIndex": i, "What": "Permission denied"})
            if errors:
                return _json_reply(409, {"Results": None, "Errors": errors})
            saved = self._store.copy()
            idx = self._next_raft_index() if writes else 0
            results: list[dict[str, object]] = []
            changed: set[str] = set()
            for i, op in enumerate(ops):
                try:
                    entries, touched = op.apply(self._store, idx)
                except _TxnOpError as exc:
                    errors.append({"OpIndex": i, "What": str(exc)})
                    continue
                changed |= touched
                for entry, with_value in entries:
                    if acl is None or acl.allows(entry.key, "read", default):
                        results.append({"KV": entry.to_json(with_value=with_value)})
            if errors:
                raft_index = self._store.raft_index
                self._store = saved
                self._store.raft_index = raft_index  # the failed apply still used a raft entry
                return _json_reply(409, {"Results": None, "Errors": errors})
            self._notify(changed)
            reply = _json_reply(200, {"Results": results or None, "Errors": None})
            if opts is not None:
                reply.headers += [("X-Consul-KnownLeader", "true"), ("X-Consul-LastContact", "0")]
            return reply


class _TxnOpError(Exception):
    """One txn operation failed; the whole transaction is rolled back."""


_TXN_WRITE_VERBS = {"set", "delete", "delete-cas", "delete-tree", "cas", "lock", "unlock"}


@dataclass(frozen=True)
class _TxnOp:
    verb: str
    key: str
    value: bytes
    flags: int
    index: int
    session: str

    @classmethod
    def from_json(cls, raw: object) -> _TxnOp:
        if not isinstance(raw, dict):
            raise ValueError("each operation must be a JSON object")
        # Go's decoder matches field names case-insensitively.
        fields = {str(k).lower(): v for k, v in raw.items()}
        kv = fields.get("kv")
        if not isinstance(kv, dict):
            raise ValueError("the Consul double supports only KV operations in a txn")
        kv_fields: dict[str, Any] = {str(k).lower(): v for k, v in kv.items()}
        value = kv_fields.get("value")
        if value is not None and not isinstance(value, str):
            raise ValueError(f"unexpected value type: {type(value).__name__}")
        try:
            decoded = base64.b64decode(value or "", validate=True)
        except binascii.Error as exc:
            raise ValueError(f"failed to decode value: {exc}") from exc
        return cls(
            verb=str(kv_fields.get("verb", "")),
            key=str(kv_fields.get("key", "")),
            value=decoded,
            flags=int(kv_fields.get("flags") or 0),
            index=int(kv_fields.get("index") or 0),
            session=str(kv_fields.get("session") or ""),
        )

    @property
    def is_write(self) -> bool:
        return self.verb in _TXN_WRITE_VERBS

    def permitted(self, acl: AclToken, default: AclPolicy) -> bool:
        if self.verb in ("get", "get-tree", "check-not-exists"):
            return True  # filtered on the way out
        if self.verb in ("check-index", "check-session"):
            return acl.allows(self.key, "read", default)
        if self.verb == "delete-tree":
            return acl.allows_write_prefix(self.key, default)
        return acl.allows(self.key, "write", default)

    def apply(self, store: _Store, idx: int) -> tuple[list[tuple[KVEntry, bool]], set[str]]:
        """state/txn.go txnKVS: (entries for the result, with-value flag) and changed keys."""
        key = self.key
        existing = store.entries.get(key)
        if self.is_write and key == "" and self.verb != "delete-tree":
            raise _TxnOpError("Must provide key")
        if self.verb == "set":
            entry, changed = store.put(idx, key, self.value, self.flags)
            return [(entry, False)], changed
        if self.verb == "cas":
            if not _cas_matches(existing, self.index):
                raise _TxnOpError(f"failed to set key {_go_quote(key)}, index is stale")
            entry, changed = store.put(idx, key, self.value, self.flags)
            return [(entry, False)], changed
        if self.verb == "delete":
            return [], store.delete(idx, key)
        if self.verb == "delete-cas":
            if existing is not None and existing.modify_index != self.index:
                raise _TxnOpError(f"failed to delete key {_go_quote(key)}, index is stale")
            return [], store.delete(idx, key)
        if self.verb == "delete-tree":
            return [], store.delete_tree(idx, key)
        if self.verb in ("lock", "unlock"):
            raise _TxnOpError(f"invalid session {_go_quote(self.session)}")
        if self.verb == "get":
            if existing is None:
                raise _TxnOpError(f"key {_go_quote(key)} doesn't exist")
            return [(existing, True)], set()
        if self.verb == "get-tree":
            return [(e, True) for e in store.listing(key)], set()
        if self.verb == "check-index":
            if existing is None:
                raise _TxnOpError(f"key {_go_quote(key)} doesn't exist")
            if existing.modify_index != self.index:
                raise _TxnOpError(f"current modify index {existing.modify_index} != {self.index}")
            return [(existing, False)], set()
        if self.verb == "check-not-exists":
            if existing is not None:
                raise _TxnOpError(f"key {_go_quote(key)} exists")
            return [], set()
        if self.verb == "check-session":
            raise _TxnOpError(
                f'failed session check for key {_go_quote(key)}, current session "" != '
                f"{_go_quote(self.session)}"
            )
        raise _TxnOpError(f"unknown KV verb {_go_quote(self.verb)}")


def _cas_matches(existing: KVEntry | None, cas: int) -> bool:
    """kvsSetCASTxn: 0 means create-only; otherwise the ModifyIndex must match."""
    if cas == 0:
        return existing is None
    return existing is not None and existing.modify_index == cas


def _conflicting_flags(query: _Query, flags: tuple[str, ...]) -> _Reply | None:
    if sum(query.has(flag) for flag in flags) > 1:
        return _text(400, "Conflicting flags: " + query.encode())
    return None


def _key_problem(key: str) -> str | None:
    """Consul 1.21.6+ key checks: `..` traversal and leading or trailing spaces."""
    if ".." in key.split("/"):
        return "key contains path traversal sequence"
    if key != key.strip(" "):
        return "key must not begin or end with a space"
    return None


class _HTTPServer(ThreadingHTTPServer):
    # Join handler threads on close, so a test never leaks a thread into the next one.
    daemon_threads = False
    block_on_close = True
    double: ConsulServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client or restart() closing a socket mid-answer is expected


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _HTTPServer

    def setup(self) -> None:
        super().setup()
        # Small answers must not wait out Nagle plus the client's delayed ACK (~40 ms).
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.double._track(self.connection, add=True)

    def finish(self) -> None:
        self.server.double._track(self.connection, add=False)
        with contextlib.suppress(OSError):  # the client or restart() closed it first
            super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._dispatch()

    do_PUT = do_DELETE = do_POST = do_PATCH = do_HEAD = do_OPTIONS = do_GET

    def _read_body(self) -> tuple[bytes, int]:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline().strip():
                        pass  # trailers
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            body = b"".join(chunks)
            # Go reports ContentLength -1 for chunked bodies; size checks then see the data.
            return body, len(body)
        length = int(self.headers.get("Content-Length") or 0)
        return (self.rfile.read(length) if length else b""), length

    def _dispatch(self) -> None:
        double = self.server.double
        raw_path, _, raw_query = self.path.partition("?")
        body, length = self._read_body()
        query = _Query.parse(raw_query)
        entry = LoggedRequest(
            self.command,
            self.path,
            unquote(raw_path),
            query.params,
            dict(self.headers.items()),
            body,
        )
        double._log_request(entry)
        reply = self._route(raw_path, query, body, length)
        if reply.drop:
            self.close_connection = True
            return
        entry.status = reply.status
        self._send(reply)

    def _route(self, raw_path: str, query: _Query, body: bytes, length: int) -> _Reply:
        double = self.server.double
        fault = double._take_fault()
        if fault is not None:
            kind, delay_s = fault
            if kind == "drop":
                return _Reply(0, drop=True)
            if kind == "no_leader":
                return _text(500, "No cluster leader")
            if kind == "rate_limited":
                return _text(429, "rate limit exceeded, try again later")
            if not double._pause(delay_s):
                return _Reply(0, drop=True)
        if _BAD_ESCAPE_RE.search(raw_path):
            return _text(400, "400 Bad Request")
        path = unquote(raw_path, errors="replace")
        # cleanhttp.PrintablePathCheckHandler wraps the whole mux.
        if not path.isprintable():
            return _Reply(400)
        token = _request_token(query, self.headers)
        if path == "/v1/kv":
            return _Reply(301, b"", [("Location", "/v1/kv/")])
        if path.startswith("/v1/kv/"):
            reply = self._check_method(_KV_METHODS)
            if reply is not None:
                return reply
            if (dc := query.get("dc")) and dc != DATACENTER:
                return _text(500, "No path to datacenter")
            key = path[len("/v1/kv/") :]
            return double.handle_kv(self.command, key, query, token=token, body=body, length=length)
        if path == "/v1/txn":
            reply = self._check_method(("PUT",))
            return reply or double.handle_txn(query, token=token, body=body, length=length)
        if path == "/v1/status/leader":
            reply = self._check_method(("GET",))
            return reply or _json_reply(200, "127.0.0.1:8300")
        return _text(404, "Invalid URL path: not a recognized HTTP API endpoint\n")

    def _check_method(self, methods: tuple[str, ...]) -> _Reply | None:
        allow = ",".join(("OPTIONS", *methods))
        if self.command == "OPTIONS":
            return _Reply(200, b"", [("Allow", allow)])
        if self.command not in methods:
            return _text(405, f"method {self.command} not allowed", [("Allow", allow)])
        return None

    def _send(self, reply: _Reply) -> None:
        self.send_response(reply.status)
        self.send_header("X-Consul-Default-Acl-Policy", self.server.double._acl_policy_name)
        for name, value in reply.headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(reply.body)))
        self.end_headers()
        if self.command != "HEAD" and reply.body:
            self.wfile.write(reply.body)


def _request_token(query: _Query, headers: Message) -> str:
    """parseTokenInternal: ?token=, then X-Consul-Token, then `Authorization: Bearer`."""
    if token := query.get("token"):
        return token
    if header := headers.get("X-Consul-Token"):
        return str(header)
    parts = str(headers.get("Authorization") or "").split(" ")
    if len(parts) > 1 and parts[0].lower() == "bearer":
        return " ".join(parts[1:]).strip()
    return ""
