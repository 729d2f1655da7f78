"""A Consul-KV-compatible HTTP server for tests: the KV, txn and session API, fault hooks.

Every behaviour follows Consul's source and docs (shared/consul-kv-behaviour.md), and where
Consul is strict the double is strict too: code that passes against it must pass against a
real agent. Switches cover what differs between deployments: ACLs and an agent default
token, TLS with optional client certificates, Enterprise namespaces and partitions, other
datacenters, and Consul 1.21.5's key rule.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import dataclasses
import json
import posixpath
import random
import re
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qsl, unquote, urlencode

import trustme

from daybook_testing.consul_sessions import (
    TTL_MULTIPLIER,
    Session,
    SessionRefusal,
    SessionTable,
    decode_create,
    requested_node,
    validate_create,
)

FaultKind = Literal["no_leader", "rate_limited", "drop", "delay"]
AclPolicy = Literal["read", "write", "deny"]
# "current": 1.21.6 and later (`..` segments and edge spaces refused); "1.21.5": that release's
# character regex (hashicorp/consul#22682, reverted in #22850); "off": the agent option
# disable_kv_key_validation.
KeyRules = Literal["current", "1.21.5", "off"]

# Consul's defaults (agent options max_query_time, default_query_time, kv_max_value_size).
CONSUL_MAX_QUERY_TIME_S = 600.0
CONSUL_DEFAULT_QUERY_TIME_S = 300.0
MAX_VALUE_BYTES = 512 * 1024
# agent/txn_endpoint.go maxTxnOps (64 until Consul raised it).
MAX_TXN_OPS = 128
# structs.JitterFraction: a blocking query waits up to timeout/16 longer.
JITTER_FRACTION = 16
DATACENTER = "dc1"
DEFAULT_NAMESPACE = "default"
DEFAULT_PARTITION = "default"
# Consul 1.21.5's kvKeyPattern, and its answer (a plain error, so HTTP 500) quoted with %q.
KEY_PATTERN_1_21_5 = r"^[a-zA-Z0-9,_./\-?&=]+$"
_KEY_RE_1_21_5 = re.compile(KEY_PATTERN_1_21_5)
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
    # The session holding the key's lock; "" when unlocked.
    session: str = ""

    def to_json(self, *, with_value: bool = True) -> dict[str, object]:
        # An empty PUT stores a nil []byte, which Go encodes as null; Session is omitempty.
        value = base64.b64encode(self.value).decode() if with_value and self.value else None
        locked = {"Session": self.session} if self.session else {}
        return {
            "LockIndex": self.lock_index,
            "Key": self.key,
            "Flags": self.flags,
            "Value": value,
            **locked,
            "CreateIndex": self.create_index,
            "ModifyIndex": self.modify_index,
        }

    def same_as(self, other: KVEntry) -> bool:
        """DirEntry.Equal: what decides whether a write changes anything."""
        return (self.value, self.flags, self.lock_index, self.session) == (
            other.value,
            other.flags,
            other.lock_index,
            other.session,
        )


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
    # `session_prefix "<node>" { policy = ... }` rules, by node-name prefix.
    session_prefix: Mapping[str, AclPolicy] = field(default_factory=dict)

    @property
    def is_anonymous(self) -> bool:
        return self.secret_id == _ANONYMOUS_SECRET

    def allows_session(
        self, node: str, access: Literal["read", "write"], default: AclPolicy
    ) -> bool:
        """session:read/write on a node: the longest matching session_prefix rule."""
        best = max((p for p in self.session_prefix if node.startswith(p)), key=len, default=None)
        rule = default if best is None else self.session_prefix[best]
        return rule == "write" or (rule == "read" and access == "read")

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

    def denial(self, access: str, name: str, resource: str = "key") -> str:
        who = (
            "anonymous token"
            if self.is_anonymous
            else f"token with AccessorID '{self.accessor_id}'"
        )
        message = (
            f"Permission denied: {who} lacks permission '{resource}:{access}' on {_go_quote(name)}"
        )
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
    """A blocked query's interest: fired by any write to its table (KV, or sessions) that
    changes a key or session id it matches."""

    def __init__(self, store: _Store | SessionTable, matches: Callable[[str], bool]) -> None:
        self.store = store
        self.matches = matches
        self.fired = False


@dataclass(frozen=True)
class _Scope:
    """Which KV table a request reaches: each datacenter has its own, and in Enterprise so
    has each partition and namespace."""

    datacenter: str = DATACENTER
    partition: str = DEFAULT_PARTITION
    namespace: str = DEFAULT_NAMESPACE


@dataclass(frozen=True)
class ServerTLS:
    """The double's HTTPS: its certificate chain and key, and the CA whose client
    certificates it requires (Consul's verify_incoming), if any."""

    cert_file: str
    key_file: str
    client_ca_file: str | None = None

    def context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert_file, self.key_file)
        if self.client_ca_file is not None:
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(cafile=self.client_ca_file)
        return context


class _Store:
    """One KV table (a datacenter's, or one namespace's), its graveyard and table indexes."""

    def __init__(self) -> None:
        self.entries: dict[str, KVEntry] = {}
        self.tombstones: dict[str, int] = {}
        self.kvs_index = 0
        self.tombstones_index = 0
        # Key -> when its lock-delay ends, on the double's clock. Like Consul's, it lives in
        # the leader's memory, outside the raft state, so a txn rollback keeps it.
        self.lock_delays: dict[str, float] = {}

    def copy(self) -> _Store:
        other = _Store()
        other.restore(self)
        return other

    def restore(self, saved: _Store) -> None:
        """Take `saved`'s contents back in place (a failed transaction's rollback)."""
        self.entries = dict(saved.entries)
        self.tombstones = dict(saved.tombstones)
        self.kvs_index = saved.kvs_index
        self.tombstones_index = saved.tombstones_index

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
        """kvsSetTxn: a plain write keeps the key's lock, its holder and LockIndex."""
        existing = self.entries.get(key)
        if existing is None:
            return self._write(KVEntry(key, value, flags, idx, idx), None)
        entry = dataclasses.replace(existing, value=value, flags=flags, modify_index=idx)
        return self._write(entry, existing)

    def _write(self, entry: KVEntry, existing: KVEntry | None) -> tuple[KVEntry, set[str]]:
        if existing is not None and existing.same_as(entry):
            # Since Consul 1.6 an identical write changes nothing and wakes nobody.
            return existing, set()
        self.entries[entry.key] = entry
        self.kvs_index = entry.modify_index
        return entry, {entry.key}

    def lock(
        self, idx: int, key: str, value: bytes, flags: int, session: str
    ) -> tuple[KVEntry | None, set[str]]:
        """kvsLockTxn (the session is valid): None when another session holds the key. A
        new holder bumps LockIndex; the holder acquiring again only writes the value."""
        existing = self.entries.get(key)
        if existing is None:
            return self._write(KVEntry(key, value, flags, idx, idx, 1, session), None)
        if existing.session not in ("", session):
            return None, set()
        lock_index = existing.lock_index + (existing.session != session)
        entry = KVEntry(key, value, flags, existing.create_index, idx, lock_index, session)
        return self._write(entry, existing)

    def unlock(
        self, idx: int, key: str, value: bytes, flags: int, session: str
    ) -> tuple[KVEntry | None, set[str]]:
        """kvsUnlockTxn: only the holder releases; the request's value is written too."""
        existing = self.entries.get(key)
        if existing is None or existing.session != session:
            return None, set()
        entry = KVEntry(key, value, flags, existing.create_index, idx, existing.lock_index)
        return self._write(entry, existing)

    def drop_session(self, idx: int, session: str, behavior: str) -> set[str]:
        """deleteSessionTxn: the session's keys are unlocked (value kept) or deleted."""
        held = [k for k, e in self.entries.items() if e.session == session]
        for key in held:
            if behavior == "delete":
                self.delete(idx, key)
            else:
                entry = self.entries[key]
                self._write(dataclasses.replace(entry, session="", modify_index=idx), entry)
        return set(held)

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
    """A Consul agent's KV, txn and session HTTP API on 127.0.0.1, with test hooks.

    Query-time settings, jitter, index gaps, the key rules and the agent default token are
    plain attributes read per request, so a test may change them at any time. ACLs are off
    (every token ignored) until `enable_acls()`; namespaces and partitions are refused as
    open-source Consul refuses them until `enable_enterprise()`.

    Sessions (consul_sessions.py) expire on the double's own clock: real time, plus what
    `advance(seconds)` adds, so a TTL test need not wait 20 s. With ACLs on, session
    create, renew and destroy need `session:write` on the double's node (`session_prefix`
    rules of `add_acl_token`), and reads hide the sessions a token may not read, as KV
    reads do. A txn's `lock`/`unlock` verbs are not implemented and refused with a 409.
    """

    def __init__(
        self,
        *,
        max_query_time_s: float = CONSUL_MAX_QUERY_TIME_S,
        default_query_time_s: float = CONSUL_DEFAULT_QUERY_TIME_S,
        jitter: bool = True,
        random_index_gaps: bool = False,
        max_value_bytes: int = MAX_VALUE_BYTES,
        tls: ServerTLS | None = None,
        key_rules: KeyRules = "current",
    ) -> None:
        self.max_query_time_s = max_query_time_s
        self.default_query_time_s = default_query_time_s
        self.jitter = jitter
        self.random_index_gaps = random_index_gaps
        self.max_value_bytes = max_value_bytes
        self.key_rules: KeyRules = key_rules
        # acl.tokens.default: the token of requests that bring none ("" means anonymous).
        self.default_token = ""
        self._tls = tls
        self._tls_context = tls.context() if tls is not None else None
        self._cond = threading.Condition(threading.RLock())
        self._stores: dict[_Scope, _Store] = {}
        # Each datacenter has its own raft log; namespaces and partitions share their DC's.
        self._raft_index: dict[str, int] = {DATACENTER: INITIAL_RAFT_INDEX}
        # Enterprise namespaces and partitions by name; None while the double is open source.
        self._namespaces: set[str] | None = None
        self._partitions: set[str] | None = None
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
        # Consul's session timer fires at TTL x this after the last renew.
        self.ttl_multiplier = TTL_MULTIPLIER
        self._sessions: dict[str, SessionTable] = {}
        # advance() moves the double's clock (TTLs, lock-delays) ahead of the real one.
        self._clock_offset_s = 0.0
        self._reaper: threading.Thread | None = None

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
        self._reaper = threading.Thread(target=self._reap_sessions, name="consul-double-ttl")
        self._reaper.start()
        return self

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._reaper is not None:
            self._reaper.join()
            self._reaper = None
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
    def scheme(self) -> str:
        return "https" if self._tls is not None else "http"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.address}"

    # -- test hooks ------------------------------------------------------------------------

    def reap_tombstones(self) -> None:
        """Drop every tombstone, as Consul does ~15 min after a delete: prefix indexes can fall."""
        with self._cond:
            for store in self._stores.values():
                store.tombstones.clear()

    def restart(self, *, keep_data: bool = False) -> None:
        """Simulate an agent restart: drop every connection; without data, indexes restart low."""
        with self._cond:
            self._epoch += 1
            if not keep_data:
                self._stores.clear()
                self._sessions.clear()
                self._raft_index = dict.fromkeys(self._raft_index, INITIAL_RAFT_INDEX)
            # A new leader restarts every session timer (initializeSessionTimers).
            for table in self._sessions.values():
                for session in table.sessions.values():
                    session.renew(self.now(), self.ttl_multiplier)
            self._cond.notify_all()
        self._close_connections()

    def now(self) -> float:
        """The double's clock (monotonic seconds), which `advance` moves ahead."""
        return time.monotonic() + self._clock_offset_s

    def advance(self, seconds: float) -> None:
        """Move the double's clock ahead: sessions whose TTL timer passes are invalidated
        before this returns, and lock-delays run out, without a test sleeping."""
        with self._cond:
            self._clock_offset_s += seconds
            self._expire_sessions()
            self._cond.notify_all()

    def sessions(self, datacenter: str = DATACENTER) -> dict[str, Session]:
        with self._cond:
            return dict(self._session_table(datacenter).sessions)

    def inject_fault(self, kind: FaultKind, *, count: int = 1, delay_s: float = 0.0) -> None:
        """Make the next `count` requests fail: 500 `No cluster leader`, 429, a dropped
        connection, or a `delay_s` pause before normal handling."""
        with self._cond:
            self._faults.extend([(kind, delay_s)] * count)

    def clear_faults(self) -> None:
        with self._cond:
            self._faults.clear()

    def add_datacenter(self, name: str) -> None:
        """A datacenter reachable with `?dc=NAME`, with a KV table and raft log of its own."""
        with self._cond:
            self._raft_index.setdefault(name, INITIAL_RAFT_INDEX)

    def enable_enterprise(
        self, *, namespaces: tuple[str, ...] = (), partitions: tuple[str, ...] = ()
    ) -> None:
        """Answer `?ns=` and `?partition=` (or their headers) as Consul Enterprise does, each
        namespace and partition with a KV table of its own. Only the `default` ones and
        those named here exist."""
        with self._cond:
            self._namespaces = {DEFAULT_NAMESPACE, *namespaces}
            self._partitions = {DEFAULT_PARTITION, *partitions}

    def put(
        self,
        key: str,
        value: str | bytes,
        *,
        datacenter: str = DATACENTER,
        namespace: str = DEFAULT_NAMESPACE,
        partition: str = DEFAULT_PARTITION,
    ) -> int:
        """Write a key as a PUT does, but past any injected fault and ACL: a change made
        while clients see an outage. Returns the key's ModifyIndex."""
        data = value.encode() if isinstance(value, str) else value
        scope = _Scope(datacenter, partition, namespace)
        with self._cond:
            store = self._store_for(scope)
            entry, changed = store.put(self._next_raft_index(datacenter), key, data, 0)
            self._notify(store, changed)
            return entry.modify_index

    def delete(self, key: str) -> None:
        """Delete a key as a DELETE does, past any injected fault and ACL (a tombstone stays)."""
        with self._cond:
            store = self._store_for(_Scope())
            self._notify(store, store.delete(self._next_raft_index(DATACENTER), key))

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
        """The default table's index (max of the kvs and tombstones tables)."""
        with self._cond:
            return self._store_for(_Scope()).table_index

    @property
    def raft_index(self) -> int:
        with self._cond:
            return self._raft_index[DATACENTER]

    def entries(
        self,
        *,
        datacenter: str = DATACENTER,
        namespace: str = DEFAULT_NAMESPACE,
        partition: str = DEFAULT_PARTITION,
    ) -> dict[str, KVEntry]:
        with self._cond:
            return dict(self._store_for(_Scope(datacenter, partition, namespace)).entries)

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
        session_prefix: Mapping[str, AclPolicy] | None = None,
    ) -> AclToken:
        token = AclToken(
            secret_id,
            accessor_id or str(uuid.uuid4()),
            dict(key_prefix or {}),
            dict(key or {}),
            dict(session_prefix or {}),
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

    def _next_raft_index(self, datacenter: str) -> int:
        step = random.randint(1, 5) if self.random_index_gaps else 1
        self._raft_index[datacenter] += step
        return self._raft_index[datacenter]

    def _store_for(self, scope: _Scope) -> _Store:
        return self._stores.setdefault(scope, _Store())

    def _session_table(self, datacenter: str) -> SessionTable:
        return self._sessions.setdefault(datacenter, SessionTable())

    def _reap_sessions(self) -> None:
        """The leader's session timers: invalidate each TTL session when its time comes."""
        with self._cond:
            while not self._stopping:
                self._expire_sessions()
                deadlines = [t.next_expiry() for t in self._sessions.values()]
                due = min((d for d in deadlines if d is not None), default=None)
                # Any change (a create, renew or advance) notifies and so re-plans the wait.
                self._cond.wait(None if due is None else max(0.0, due - self.now()))

    def _expire_sessions(self) -> None:
        now = self.now()
        for datacenter, table in self._sessions.items():
            for session in table.expired(now):
                # The lock-delay runs from when the timer fired, even if advance() jumped
                # past it.
                self._invalidate(datacenter, session, at=session.expires_at)

    def _invalidate(self, datacenter: str, session: Session, at: float | None = None) -> None:
        """deleteSessionTxn: drop the session, release or delete its keys, and start each
        key's lock-delay."""
        table = self._session_table(datacenter)
        idx = self._next_raft_index(datacenter)
        del table.sessions[session.id]
        table.index = idx
        until = (self.now() if at is None else at) + session.applied_lock_delay_s
        for scope, store in self._stores.items():
            if scope.datacenter != datacenter:
                continue
            changed = store.drop_session(idx, session.id, session.behavior)
            if session.applied_lock_delay_s > 0:
                store.lock_delays.update(dict.fromkeys(changed, until))
            self._notify(store, changed)
        self._notify(table, {session.id})

    def _notify(self, store: _Store | SessionTable, changed: set[str]) -> None:
        if not changed:
            return
        for watch in self._watches:
            if watch.store is store and not watch.fired:
                watch.fired = any(watch.matches(key) for key in changed)
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

    def _blocking(self, opts: _ReadOptions, run: Callable[[], _Reply], watch: _Watch) -> _Reply:
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
                    if not self._wait_for_change(watch, deadline, epoch):
                        return _Reply(0, drop=True)
                    if not watch.fired:
                        return run()  # timed out: the current state, maybe the same index
            finally:
                self._blocked -= 1

    def _wait_for_change(self, watch: _Watch, deadline: float, epoch: int) -> bool:
        """Hold until `watch` fires or the deadline; False if a restart or stop came first."""
        watch.fired = False
        self._watches.append(watch)
        try:
            while not (watch.fired or self._stopping or self._epoch != epoch):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
        finally:
            self._watches.remove(watch)
        return not (self._stopping or self._epoch != epoch)

    def _resolve_token(self, token: str) -> AclToken | _Reply | None:
        """The caller's ACL token (the effective one: see `_Call.token`); None when ACLs are
        off; a 403 reply for an unknown token."""
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
        self, entries: list[KVEntry], call: _Call, acl: AclToken | None, index: int
    ) -> tuple[list[KVEntry], list[tuple[str, str]]]:
        """A listing as the token may see it, and the read headers that go with it."""
        headers = self._meta_headers(index, call.opts.consistency)
        if acl is None:
            return entries, headers
        default = self._acl_default or "write"
        visible = [e for e in entries if acl.allows(e.key, "read", default)]
        # maskResultsFilteredByACLs: a request whose token is blank after the agent default
        # token was applied never learns that it was filtered. Any other token does, even
        # the literal `anonymous` one.
        if len(visible) < len(entries) and call.token:
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

    def _scope_of(self, query: _Query, headers: Message) -> _Scope | _Reply:
        """parseEntMeta (http_ce.go in open source), then the datacenter's RPC route."""
        with self._cond:
            namespaces, partitions = self._namespaces, self._partitions
            datacenters = set(self._raft_index)
        asked = {
            "namespace": (str(headers.get("X-Consul-Namespace") or ""), query.get("ns")),
            "partition": (str(headers.get("X-Consul-Partition") or ""), query.get("partition")),
        }
        if namespaces is None or partitions is None:
            return _open_source_refusal(asked) or self._datacenter_scope(query, datacenters)
        namespace = asked["namespace"][1] or asked["namespace"][0] or DEFAULT_NAMESPACE
        partition = asked["partition"][1] or asked["partition"][0] or DEFAULT_PARTITION
        for kind, name, known in (
            ("Namespace", namespace, namespaces),
            ("Partition", partition, partitions),
        ):
            if name not in known:
                # Enterprise's exact wording is not public; the point is a refusal, so that
                # no test passes by writing to a namespace nobody created.
                return _text(400, f"{kind} {_go_quote(name)} does not exist")
        scope = self._datacenter_scope(query, datacenters)
        if isinstance(scope, _Reply):
            return scope
        return _Scope(scope.datacenter, partition, namespace)

    @staticmethod
    def _datacenter_scope(query: _Query, datacenters: set[str]) -> _Scope | _Reply:
        datacenter = query.get("dc") or DATACENTER
        if datacenter not in datacenters:
            return _text(500, "No path to datacenter")
        return _Scope(datacenter)

    def _key_refusal(self, key: str) -> _Reply | None:
        """The KV endpoint's key checks, as the configured Consul version makes them."""
        if not key or self.key_rules == "off":
            return None
        if self.key_rules == "1.21.5":
            if not _KEY_RE_1_21_5.fullmatch(key):
                # A plain error in that release, hence 500, quoted with Go's %q.
                quoted = json.dumps(KEY_PATTERN_1_21_5)
                return _text(500, f"invalid key name, keys should respect the {quoted} format")
            if ".." in key:
                return _text(500, "invalid key name, keys should not contain '..'")
            return None
        problem = _key_problem(key)
        return _text(400, problem) if problem else None

    def handle_kv(self, call: _Call, key: str) -> _Reply:
        opts = self._read_options(call.query)
        if isinstance(opts, _Reply):
            return opts
        call.opts = opts
        refusal = self._key_refusal(key)
        if refusal is not None:
            return refusal
        if call.method == "GET":
            if call.query.has("keys"):
                return self._kv_keys(call, key)
            return self._kv_get(call, key)
        if call.method == "PUT":
            return self._kv_put(call, key)
        return self._kv_delete(call, key)

    def _kv_get(self, call: _Call, key: str) -> _Reply:
        if not call.query.has("recurse") and key == "":
            return _text(400, "Missing key name")
        with self._cond:
            acl = self._resolve_token(call.token)
        if isinstance(acl, _Reply):
            return acl
        store = self._store_for(call.scope)
        if call.query.has("recurse"):

            def run_list() -> _Reply:
                index = store.list_index(key)
                entries, headers = self._visible(store.listing(key), call, acl, index)
                if not entries:
                    return _Reply(404, b"", headers, index=index)
                pretty = call.query.has("pretty")
                return _read_reply([e.to_json() for e in entries], headers, index, pretty=pretty)

            watch = _Watch(store, lambda changed: changed.startswith(key))
            return self._blocking(call.opts, run_list, watch)
        watch = _Watch(store, lambda changed: changed == key)
        return self._blocking(call.opts, lambda: self._read_one(call, key, acl, store), watch)

    def _read_one(self, call: _Call, key: str, acl: AclToken | None, store: _Store) -> _Reply:
        if acl is not None and not acl.allows(key, "read", self._acl_default or "write"):
            return _text(403, acl.denial("read", key))
        entry = store.entries.get(key)
        if entry is None:
            index = store.table_index
            headers = self._meta_headers(index, call.opts.consistency)
            return _Reply(404, b"", headers, index=index, not_found=True)
        headers = self._meta_headers(entry.modify_index, call.opts.consistency)
        if call.query.has("raw"):
            headers += [
                ("Content-Type", "text/plain"),
                ("X-Content-Type-Options", "nosniff"),
                ("Content-Security-Policy", "sandbox"),
            ]
            return _Reply(200, entry.value, headers, index=entry.modify_index)
        pretty = call.query.has("pretty")
        return _read_reply([entry.to_json()], headers, entry.modify_index, pretty=pretty)

    def _kv_keys(self, call: _Call, prefix: str) -> _Reply:
        query = call.query
        separator = query.get("separator") if query.has("separator") else query.get("seperator")
        with self._cond:
            acl = self._resolve_token(call.token)
        if isinstance(acl, _Reply):
            return acl
        store = self._store_for(call.scope)

        def run() -> _Reply:
            index = store.list_index(prefix)
            entries, headers = self._visible(store.listing(prefix), call, acl, index)
            # Keys past the separator fold into one "directory", listed once, in order.
            keys: dict[str, None] = {}
            for entry in entries:
                cut = entry.key.find(separator, len(prefix)) if separator else -1
                keys[entry.key if cut < 0 else entry.key[: cut + len(separator)]] = None
            # The root answers [] rather than 404.
            if not keys and prefix != "":
                return _Reply(404, b"", headers, index=index)
            return _read_reply(list(keys), headers, index, pretty=query.has("pretty"))

        return self._blocking(call.opts, run, _Watch(store, lambda k: k.startswith(prefix)))

    def _kv_put(self, call: _Call, key: str) -> _Reply:
        if key == "":
            return _text(400, "Missing key name")
        if conflict := _conflicting_flags(call.query, ("cas", "acquire", "release")):
            return conflict
        flags = _uint_param(call.query, "flags")
        if isinstance(flags, _Reply):
            return flags
        cas = _uint_param(call.query, "cas")
        if isinstance(cas, _Reply):
            return cas
        if call.length > self.max_value_bytes:
            return _text(
                413,
                f"Request body({call.length} bytes) too large, max size: "
                f"{self.max_value_bytes} bytes. See https://developer.hashicorp.com/docs/agent/"
                "config/config-files#kv_max_value_size.",
            )
        with self._cond:
            acl = self._resolve_token(call.token)
            if isinstance(acl, _Reply):
                return acl
            if acl is not None and not acl.allows(key, "write", self._acl_default or "write"):
                return _text(403, acl.denial("write", key))
            if call.query.has("acquire") or call.query.has("release"):
                return self._kv_lock(call, key, flags or 0)
            idx = self._next_raft_index(call.scope.datacenter)
            store = self._store_for(call.scope)
            if cas is not None and not _cas_matches(store.entries.get(key), cas):
                return _json_reply(200, False)
            _, changed = store.put(idx, key, call.body, flags or 0)
            self._notify(store, changed)
        return _json_reply(200, True)

    def _kv_lock(self, call: _Call, key: str, flags: int) -> _Reply:
        """`?acquire=ID` / `?release=ID`: kvsPreApply's lock-delay check (before anything
        else, so even an unknown session just gets false), then kvsLockTxn/kvsUnlockTxn."""
        store = self._store_for(call.scope)
        acquire = call.query.has("acquire")
        session = call.query.get("acquire" if acquire else "release")
        if acquire and store.lock_delays.get(key, 0.0) > self.now():
            return _json_reply(200, False)
        if not session:
            return _text(500, "missing session")
        datacenter = call.scope.datacenter
        if acquire and session not in self._session_table(datacenter).sessions:
            return _text(500, f"invalid session {_go_quote(session)}")
        idx = self._next_raft_index(datacenter)
        write = store.lock if acquire else store.unlock
        entry, changed = write(idx, key, call.body, flags, session)
        self._notify(store, changed)
        return _json_reply(200, entry is not None)

    def _kv_delete(self, call: _Call, key: str) -> _Reply:
        if conflict := _conflicting_flags(call.query, ("recurse", "cas")):
            return conflict
        recurse = call.query.has("recurse")
        if not recurse and key == "":
            return _text(400, "Missing key name")
        cas = _uint_param(call.query, "cas")
        if isinstance(cas, _Reply):
            return cas
        with self._cond:
            acl = self._resolve_token(call.token)
            if isinstance(acl, _Reply):
                return acl
            default = self._acl_default or "write"
            if acl is not None and not (
                acl.allows_write_prefix(key, default)
                if recurse
                else acl.allows(key, "write", default)
            ):
                return _text(403, acl.denial("write", key))
            store = self._store_for(call.scope)
            idx = self._next_raft_index(call.scope.datacenter)
            if recurse:
                self._notify(store, store.delete_tree(idx, key))
                return _json_reply(200, True)
            existing = store.entries.get(key)
            if cas is not None and existing is not None and existing.modify_index != cas:
                return _json_reply(200, False)
            # kvsDeleteCASTxn answers true for a missing key, whatever the index.
            self._notify(store, store.delete(idx, key))
        return _json_reply(200, True)

    # -- sessions --------------------------------------------------------------------------

    def _session_write_denied(self, call: _Call, node: str) -> _Reply | None:
        """session:write on the session's node, when ACLs are on (as key:write for KV)."""
        acl = self._resolve_token(call.token)
        if isinstance(acl, _Reply):
            return acl
        if acl is not None and not acl.allows_session(node, "write", self._acl_default or "write"):
            return _text(403, acl.denial("write", node, "session"))
        return None

    def session_create(self, call: _Call) -> _Reply:
        try:
            fields = decode_create(call.body, parse_go_duration) if call.length > 0 else {}
            with self._cond:
                denied = self._session_write_denied(call, requested_node(fields))
                if denied is not None:
                    return denied
                request = validate_create(fields, parse_go_duration)
                datacenter = call.scope.datacenter
                table = self._session_table(datacenter)
                idx = self._next_raft_index(datacenter)
                session = request.create(idx)
                session.renew(self.now(), self.ttl_multiplier)
                table.sessions[session.id] = session
                table.index = idx
                self._notify(table, {session.id})
        except SessionRefusal as refusal:
            return _text(refusal.status, refusal.message)
        return _json_reply(200, {"ID": session.id})

    def session_renew(self, call: _Call, session_id: str) -> _Reply:
        if not session_id:
            return _text(400, "Missing session")
        with self._cond:
            session = self._session_table(call.scope.datacenter).sessions.get(session_id)
            if session is None:
                return _text(404, f"Session id '{session_id}' not found")
            denied = self._session_write_denied(call, session.node)
            if denied is not None:
                return denied
            session.renew(self.now(), self.ttl_multiplier)
            self._cond.notify_all()  # the TTL reaper re-plans its wait
            return _json_reply(200, [session.to_json()], pretty=call.query.has("pretty"))

    def session_destroy(self, call: _Call, session_id: str) -> _Reply:
        """Idempotent: an unknown session is destroyed too (true)."""
        if not session_id:
            return _text(400, "Missing session")
        with self._cond:
            datacenter = call.scope.datacenter
            session = self._session_table(datacenter).sessions.get(session_id)
            if session is not None:
                denied = self._session_write_denied(call, session.node)
                if denied is not None:
                    return denied
                self._invalidate(datacenter, session)
        return _json_reply(200, True)

    def session_read(self, call: _Call, session_id: str | None, node: str | None) -> _Reply:
        """info (one id), node (one node's) or list (all): blocking on the session table,
        sessions the token may not read filtered out."""
        opts = self._read_options(call.query)
        if isinstance(opts, _Reply):
            return opts
        if session_id == "" or node == "":
            return _text(400, "Missing node name" if node == "" else "Missing session")
        with self._cond:
            acl = self._resolve_token(call.token)
        if isinstance(acl, _Reply):
            return acl
        table = self._session_table(call.scope.datacenter)
        default = self._acl_default or "write"

        def run() -> _Reply:
            found = [
                s.to_json()
                for s in table.sessions.values()
                if session_id in (None, s.id)
                and node in (None, s.node)
                and (acl is None or acl.allows_session(s.node, "read", default))
            ]
            headers = self._meta_headers(table.index, opts.consistency)
            return _read_reply(found, headers, max(1, table.index), pretty=call.query.has("pretty"))

        watch = _Watch(table, lambda changed: session_id in (None, changed))
        return self._blocking(opts, run, watch)

    def handle_txn(self, call: _Call) -> _Reply:
        ops = self._parse_txn(call)
        if isinstance(ops, _Reply):
            return ops
        writes = sum(op.is_write for op in ops)
        opts = self._read_options(call.query) if writes == 0 else None
        if isinstance(opts, _Reply):
            return opts
        with self._cond:
            acl = self._resolve_token(call.token)
            if isinstance(acl, _Reply):
                return acl
            default = self._acl_default or "write"
            denied = [
                {"OpIndex": i, "What": "Permission denied"}
                for i, op in enumerate(ops)
                if acl is not None and not op.permitted(acl, default)
            ]
            if denied:
                return _json_reply(409, {"Results": None, "Errors": denied})
            reply = self._apply_txn(call.scope, ops, acl, writes)
        if opts is not None and reply.status == 200:
            reply.headers += [("X-Consul-KnownLeader", "true"), ("X-Consul-LastContact", "0")]
        return reply

    def _parse_txn(self, call: _Call) -> list[_TxnOp] | _Reply:
        """convertOps: the request's size, its JSON, the operation count, each value's size."""
        max_len = max(MAX_VALUE_BYTES, self.max_value_bytes)
        if call.length > max_len:
            return _text(413, f"Request body too large, max size: {max_len} bytes")
        try:
            raw_ops = json.loads(call.body)
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
        return ops

    def _apply_txn(
        self, scope: _Scope, ops: list[_TxnOp], acl: AclToken | None, writes: int
    ) -> _Reply:
        """Every operation at one raft index, or none of them (the lock is held)."""
        store = self._store_for(scope)
        saved = store.copy()
        idx = self._next_raft_index(scope.datacenter) if writes else 0
        default = self._acl_default or "write"
        results: list[dict[str, object]] = []
        errors: list[dict[str, object]] = []
        changed: set[str] = set()
        for i, op in enumerate(ops):
            try:
                entries, touched = op.apply(store, idx)
            except _TxnOpError as exc:
                errors.append({"OpIndex": i, "What": str(exc)})
                continue
            changed |= touched
            results += [
                {"KV": entry.to_json(with_value=with_value)}
                for entry, with_value in entries
                if acl is None or acl.allows(entry.key, "read", default)
            ]
        if errors:
            store.restore(saved)  # the failed apply still used its raft entry
            return _json_reply(409, {"Results": None, "Errors": errors})
        self._notify(store, changed)
        return _json_reply(200, {"Results": results or None, "Errors": None})


@dataclass
class _Call:
    """One KV or txn request as the endpoints see it."""

    method: str
    query: _Query
    # The effective token: the request's own (`?token=`, X-Consul-Token, Bearer), else the
    # agent default token; "" when neither, which ACLs treat as `anonymous`.
    token: str
    body: bytes
    length: int
    scope: _Scope
    opts: _ReadOptions = field(default_factory=lambda: _ReadOptions(0, None, "leader"))


def _open_source_refusal(asked: Mapping[str, tuple[str, str]]) -> _Reply | None:
    """http_ce.go parseEntMeta: any namespace or partition, even `default`, is a 400."""
    for kind, (header, param) in asked.items():
        title = "Namespaces" if kind == "namespace" else "Partitions"
        name = "X-Consul-Namespace" if kind == "namespace" else "X-Consul-Partition"
        query_name = "ns" if kind == "namespace" else "partition"
        if header:
            return _text(400, f'Invalid header: "{name}" - {title} are a Consul Enterprise feature')
        if param:
            return _text(
                400,
                f'Invalid query parameter: "{query_name}" - {title} are a Consul Enterprise '
                "feature",
            )
    return None


def _uint_param(query: _Query, name: str) -> int | _Reply | None:
    """A uint64 query parameter as strconv.ParseUint reads it; its error is a plain 500."""
    if not query.has(name):
        return None
    value = _parse_uint64(query.get(name))
    if value is None:
        return _text(
            500, f"strconv.ParseUint: parsing {_go_quote(query.get(name))}: invalid syntax"
        )
    return value


class _TxnOpError(Exception):
    """One txn operation failed; the whole transaction is rolled back."""


_TXN_WRITE_VERBS = {"set", "delete", "delete-cas", "delete-tree", "cas", "lock", "unlock"}
_TxnResult = tuple[list[tuple[KVEntry, bool]], set[str]]


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

    def apply(self, store: _Store, idx: int) -> _TxnResult:
        """state/txn.go txnKVS: (entries for the result, with-value flag) and changed keys."""
        if self.is_write and self.key == "" and self.verb != "delete-tree":
            raise _TxnOpError("Must provide key")
        verb = _TXN_VERBS.get(self.verb)
        if verb is None:
            raise _TxnOpError(f"unknown KV verb {_go_quote(self.verb)}")
        return verb(self, store, idx)

    def _set(self, store: _Store, idx: int) -> _TxnResult:
        if self.verb == "cas" and not _cas_matches(store.entries.get(self.key), self.index):
            raise _TxnOpError(f"failed to set key {_go_quote(self.key)}, index is stale")
        entry, changed = store.put(idx, self.key, self.value, self.flags)
        return [(entry, False)], changed

    def _delete(self, store: _Store, idx: int) -> _TxnResult:
        existing = store.entries.get(self.key)
        if self.verb == "delete-tree":
            return [], store.delete_tree(idx, self.key)
        stale = existing is not None and existing.modify_index != self.index
        if self.verb == "delete-cas" and stale:
            raise _TxnOpError(f"failed to delete key {_go_quote(self.key)}, index is stale")
        return [], store.delete(idx, self.key)

    def _lock(self, store: _Store, idx: int) -> _TxnResult:
        # Locks belong on the KV endpoint (?acquire/?release), which the double implements;
        # refusing here keeps a txn lock from seeming to work against the double.
        raise _TxnOpError(f"the Consul double does not implement the txn verb {self.verb!r}")

    def _get(self, store: _Store, idx: int) -> _TxnResult:
        if self.verb == "get-tree":
            return [(e, True) for e in store.listing(self.key)], set()
        existing = store.entries.get(self.key)
        if existing is None:
            raise _TxnOpError(f"key {_go_quote(self.key)} doesn't exist")
        return [(existing, True)], set()

    def _check(self, store: _Store, idx: int) -> _TxnResult:
        existing = store.entries.get(self.key)
        if self.verb == "check-not-exists":
            if existing is not None:
                raise _TxnOpError(f"key {_go_quote(self.key)} exists")
            return [], set()
        if self.verb == "check-session":
            return self._check_session(existing)
        if existing is None:
            raise _TxnOpError(f"key {_go_quote(self.key)} doesn't exist")
        if existing.modify_index != self.index:
            raise _TxnOpError(f"current modify index {existing.modify_index} != {self.index}")
        return [(existing, False)], set()

    def _check_session(self, existing: KVEntry | None) -> _TxnResult:
        """kvsCheckSessionTxn."""
        if existing is None:
            raise _TxnOpError(f"failed to check session, key {_go_quote(self.key)} doesn't exist")
        if existing.session != self.session:
            raise _TxnOpError(
                f"failed session check for key {_go_quote(self.key)}, current session "
                f"{_go_quote(existing.session)} != {_go_quote(self.session)}"
            )
        return [(existing, False)], set()


_TXN_VERBS: dict[str, Callable[[_TxnOp, _Store, int], _TxnResult]] = {
    "set": _TxnOp._set,
    "cas": _TxnOp._set,
    "delete": _TxnOp._delete,
    "delete-cas": _TxnOp._delete,
    "delete-tree": _TxnOp._delete,
    "lock": _TxnOp._lock,
    "unlock": _TxnOp._lock,
    "get": _TxnOp._get,
    "get-tree": _TxnOp._get,
    "check-index": _TxnOp._check,
    "check-not-exists": _TxnOp._check,
    "check-session": _TxnOp._check,
}


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


def clean_path(path: str) -> str:
    """Go's net/http cleanPath, which ServeMux applies to the escaped path before routing:
    `//` and `.` segments collapse, `..` climbs, a trailing slash stays."""
    if not path:
        return "/"
    if path[0] != "/":
        path = "/" + path
    cleaned = posixpath.normpath(path)
    if cleaned.startswith("//"):  # POSIX keeps two leading slashes; Go's path.Clean does not
        cleaned = "/" + cleaned.lstrip("/")
    if path.endswith("/") and cleaned != "/":
        cleaned += "/"
    return cleaned


class _HTTPServer(ThreadingHTTPServer):
    # Join handler threads on close, so a test never leaks a thread into the next one.
    daemon_threads = False
    block_on_close = True
    double: ConsulServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client or restart() closing a socket mid-answer is expected


# A client that connects and never finishes its TLS handshake must not hold a thread forever.
_HANDSHAKE_TIMEOUT_S = 10.0
_Route = Callable[["_Handler", _Call, str], _Reply]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _HTTPServer

    def setup(self) -> None:
        context = self.server.double._tls_context
        if context is not None:
            # In this handler's own thread: a slow or failing handshake stalls no one else.
            self.request.settimeout(_HANDSHAKE_TIMEOUT_S)
            self.request = context.wrap_socket(self.request, server_side=True)
            self.request.settimeout(None)
        super().setup()
        # Small answers must not wait out Nagle plus the client's delayed ACK (~40 ms).
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.double._track(self.connection, add=True)

    def finish(self) -> None:
        self.server.double._track(self.connection, add=False)
        with contextlib.suppress(OSError):  # the client or restart() closed it first
            super().finish()
        if self.server.double._tls_context is not None:
            # The server closes the socket it accepted, which wrap_socket() detached.
            self.request.close()

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
        reply = self._route(raw_path, raw_query, query, body, length)
        if reply.drop:
            self.close_connection = True
            return
        entry.status = reply.status
        self._send(reply)

    def _route(
        self, raw_path: str, raw_query: str, query: _Query, body: bytes, length: int
    ) -> _Reply:
        """The layers a request crosses in the agent: Go's server, cleanhttp's printable-path
        check, ServeMux's path cleaning, then the endpoint."""
        reply = self._injected_fault() or self._path_refusal(raw_path, raw_query)
        if reply is not None:
            return reply
        path = unquote(raw_path, errors="replace")
        if path == "/v1/kv":
            return _Reply(301, b"", [("Location", "/v1/kv/")])
        for prefix, methods, endpoint in _ROUTES:
            if path == prefix or (prefix.endswith("/") and path.startswith(prefix)):
                reply = self._check_method(methods)
                if reply is not None:
                    return reply
                scope = self.server.double._scope_of(query, self.headers)
                if isinstance(scope, _Reply):
                    return scope
                double = self.server.double
                token = _request_token(query, self.headers) or double.default_token
                call = _Call(self.command, query, token, body, length, scope)
                return endpoint(self, call, path[len(prefix) :])
        return _text(404, "Invalid URL path: not a recognized HTTP API endpoint\n")

    def _injected_fault(self) -> _Reply | None:
        double = self.server.double
        fault = double._take_fault()
        if fault is None:
            return None
        kind, delay_s = fault
        if kind == "drop":
            return _Reply(0, drop=True)
        if kind == "no_leader":
            return _text(500, "No cluster leader")
        if kind == "rate_limited":
            return _text(429, "rate limit exceeded, try again later")
        return None if double._pause(delay_s) else _Reply(0, drop=True)

    def _path_refusal(self, raw_path: str, raw_query: str) -> _Reply | None:
        if _BAD_ESCAPE_RE.search(raw_path):
            return _text(400, "400 Bad Request")  # Go's server cannot parse the URL
        # cleanhttp.PrintablePathCheckHandler wraps the whole mux and reads the decoded path.
        if not unquote(raw_path, errors="replace").isprintable():
            return _Reply(400)
        cleaned = clean_path(raw_path)
        if cleaned != raw_path and self.command != "CONNECT":
            location = cleaned + (f"?{raw_query}" if raw_query else "")
            body = b""
            if self.command in ("GET", "HEAD"):  # http.Redirect writes a note for these
                body = f'<a href="{location}">Moved Permanently</a>.\n\n'.encode()
            headers = [("Location", location), ("Content-Type", "text/html; charset=utf-8")]
            return _Reply(301, body, headers)
        return None

    def _kv(self, call: _Call, key: str) -> _Reply:
        return self.server.double.handle_kv(call, key)

    def _txn(self, call: _Call, rest: str) -> _Reply:
        return self.server.double.handle_txn(call)

    def _session_create(self, call: _Call, rest: str) -> _Reply:
        return self.server.double.session_create(call)

    def _session_renew(self, call: _Call, rest: str) -> _Reply:
        return self.server.double.session_renew(call, rest)

    def _session_destroy(self, call: _Call, rest: str) -> _Reply:
        return self.server.double.session_destroy(call, rest)

    def _session_info(self, call: _Call, rest: str) -> _Reply:
        return self.server.double.session_read(call, rest, None)

    def _session_node(self, call: _Call, rest: str) -> _Reply:
        return self.server.double.session_read(call, None, rest)

    def _session_list(self, call: _Call, rest: str) -> _Reply:
        return self.server.double.session_read(call, None, None)

    def _leader(self, call: _Call, rest: str) -> _Reply:
        return _json_reply(200, "127.0.0.1:8300")

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


_ROUTES: tuple[tuple[str, tuple[str, ...], _Route], ...] = (
    ("/v1/kv/", _KV_METHODS, _Handler._kv),
    ("/v1/txn", ("PUT",), _Handler._txn),
    ("/v1/status/leader", ("GET",), _Handler._leader),
    ("/v1/session/create", ("PUT",), _Handler._session_create),
    ("/v1/session/renew/", ("PUT",), _Handler._session_renew),
    ("/v1/session/destroy/", ("PUT",), _Handler._session_destroy),
    ("/v1/session/info/", ("GET",), _Handler._session_info),
    ("/v1/session/node/", ("GET",), _Handler._session_node),
    ("/v1/session/list", ("GET",), _Handler._session_list),
)


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


@dataclass(frozen=True)
class ConsulPKI:
    """A CA made for this test session, with a server certificate for 127.0.0.1 and
    localhost and a client certificate, as PEM files."""

    ca: trustme.CA
    directory: Path
    ca_file: str
    server: ServerTLS
    client_cert_file: str
    client_key_file: str

    @classmethod
    def create(cls, directory: Path) -> ConsulPKI:
        ca = trustme.CA(organization_name="Daybook test CA")
        ca_file = directory / "ca.pem"
        ca.cert_pem.write_to_path(str(ca_file))
        client = ca.issue_cert("daybook-client")
        client_cert, client_key = directory / "client.pem", directory / "client-key.pem"
        client.cert_chain_pems[0].write_to_path(str(client_cert))
        client.private_key_pem.write_to_path(str(client_key))
        pki = cls(ca, directory, str(ca_file), ServerTLS("", ""), str(client_cert), str(client_key))
        return dataclasses.replace(pki, server=pki.server_tls("127.0.0.1", "localhost"))

    def server_tls(self, *names: str, require_client_cert: bool = False) -> ServerTLS:
        """A server certificate for exactly `names` (each one a SAN)."""
        issued = self.ca.issue_cert(*names)
        stem = f"server-{uuid.uuid4().hex[:8]}"
        cert, key = self.directory / f"{stem}.pem", self.directory / f"{stem}-key.pem"
        cert.write_bytes(b"".join(blob.bytes() for blob in issued.cert_chain_pems))
        issued.private_key_pem.write_to_path(str(key))
        client_ca = self.ca_file if require_client_cert else None
        return ServerTLS(str(cert), str(key), client_ca)
