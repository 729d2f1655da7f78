"""Consul sessions for the KV double: the table, the create request's rules, the TTL clock.

Read from Consul's source (agent/session_endpoint.go, agent/consul/session_endpoint.go,
agent/consul/session_ttl.go, agent/consul/state/session.go) and its session API docs:

* Create validates, in this order: the Behavior (`release`, the default, or `delete`), the
  TTL (a Go duration; 0 means none, else between 10s and 24h), then the node and the checks
  the session is tied to. Every one of those refusals is a plain RPC error, which the HTTP
  layer answers with 500 (only a body that does not decode is a 400).
* A TTL session is invalidated when TTL x 2 (Consul's SessionTTLMultiplier) passes after its
  last create or renew: never before the TTL, at most twice it.
* LockDelay is a Go duration string or a number of nanoseconds; a number below 1000 is
  taken as seconds (agent lockDelayMinThreshold). It is capped at 60 s when applied.

The double has one node with one check, `serfHealth`, always passing: a session tied to
another node or check is refused as Consul refuses an unregistered one.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# The agent's node; its only check is the Serf health check every agent has.
NODE_NAME = "daybook-consul-double"
SERF_CHECK = "serfHealth"
# structs.SessionTTLMultiplier, SessionTTLMin (server config default), SessionTTLMax,
# MaxLockDelay, and the agent's default lock-delay.
TTL_MULTIPLIER = 2.0
SESSION_TTL_MIN_S = 10.0
SESSION_TTL_MAX_S = 86400.0
MAX_LOCK_DELAY_S = 60.0
DEFAULT_LOCK_DELAY_S = 15.0
_LOCK_DELAY_MIN_THRESHOLD_NS = 1000
_NS = 1_000_000_000

DurationParser = Callable[[str], "float | None"]


class SessionRefusal(Exception):
    """A create request Consul refuses: the HTTP status and body it answers with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Session:
    """One live session, as structs.Session, plus when the double invalidates it."""

    id: str
    name: str
    node: str
    lock_delay_s: float
    behavior: str
    ttl: str
    ttl_s: float
    node_checks: list[str]
    create_index: int
    # Monotonic deadline on the double's clock; None for a session without a TTL.
    expires_at: float | None = None

    def to_json(self) -> dict[str, object]:
        return {
            "ID": self.id,
            "Name": self.name,
            "Node": self.node,
            # time.Duration is encoded as integer nanoseconds.
            "LockDelay": round(self.lock_delay_s * _NS),
            "Behavior": self.behavior,
            "TTL": self.ttl,
            "NodeChecks": self.node_checks,
            "ServiceChecks": None,
            "CreateIndex": self.create_index,
            "ModifyIndex": self.create_index,
        }

    def renew(self, now: float, multiplier: float) -> None:
        if self.ttl_s > 0:
            self.expires_at = now + self.ttl_s * multiplier

    @property
    def applied_lock_delay_s(self) -> float:
        return min(self.lock_delay_s, MAX_LOCK_DELAY_S)


@dataclass
class SessionTable:
    """A datacenter's sessions and the table's raft index."""

    sessions: dict[str, Session] = field(default_factory=dict)
    index: int = 0

    def next_expiry(self) -> float | None:
        deadlines = [s.expires_at for s in self.sessions.values() if s.expires_at is not None]
        return min(deadlines, default=None)

    def expired(self, now: float) -> list[Session]:
        return [
            s for s in self.sessions.values() if s.expires_at is not None and s.expires_at <= now
        ]


@dataclass(frozen=True)
class SessionRequest:
    """A validated create request."""

    name: str
    node: str
    lock_delay_s: float
    behavior: str
    ttl: str
    ttl_s: float
    node_checks: list[str]

    def create(self, index: int) -> Session:
        return Session(
            id=str(uuid.uuid4()),
            name=self.name,
            node=self.node,
            lock_delay_s=self.lock_delay_s,
            behavior=self.behavior,
            ttl=self.ttl,
            ttl_s=self.ttl_s,
            node_checks=self.node_checks,
            create_index=index,
        )


def decode_create(body: bytes, parse_duration: DurationParser) -> dict[str, Any]:
    """The create body as the agent decodes it (Go's JSON rules: field names match
    case-insensitively, types must fit); a body that does not decode is a 400."""
    if not body:
        return {}
    try:
        return _decode(body, parse_duration)
    except ValueError as exc:
        raise SessionRefusal(400, f"Request decode failed: {exc}") from None


def requested_node(fields: dict[str, Any]) -> str:
    return str(fields.get("node") or NODE_NAME)


def validate_create(fields: dict[str, Any], parse_duration: DurationParser) -> SessionRequest:
    """Session.Apply's checks then sessionCreateTxn's, in Consul's order (after ACLs)."""
    behavior = fields.get("behavior") or "release"
    if behavior not in ("release", "delete"):
        raise SessionRefusal(500, f"Invalid Behavior setting '{behavior}'")
    ttl = str(fields.get("ttl") or "")
    ttl_s = _ttl_s(ttl, parse_duration) if ttl else 0.0
    node = requested_node(fields)
    if node != NODE_NAME:
        raise SessionRefusal(500, "Missing node registration")
    checks = _checks(fields)
    for check in checks:
        if check != SERF_CHECK:
            raise SessionRefusal(500, f"Missing check '{check}' registration")
    return SessionRequest(
        name=str(fields.get("name") or ""),
        node=node,
        lock_delay_s=fields.get("lockdelay", DEFAULT_LOCK_DELAY_S),
        behavior=behavior,
        ttl=ttl,
        ttl_s=ttl_s,
        node_checks=checks,
    )


def _ttl_s(ttl: str, parse_duration: DurationParser) -> float:
    seconds = parse_duration(ttl)
    if seconds is None:
        raise SessionRefusal(
            500, f"Session TTL '{ttl}' invalid: time: invalid duration {json.dumps(ttl)}"
        )
    if seconds != 0 and not SESSION_TTL_MIN_S <= seconds <= SESSION_TTL_MAX_S:
        # %d of a time.Duration prints nanoseconds; the bounds print as Go durations.
        raise SessionRefusal(
            500, f"Invalid Session TTL '{round(seconds * _NS)}', must be between [10s=24h0m0s]"
        )
    return seconds


def _decode(body: bytes, parse_duration: DurationParser) -> dict[str, Any]:
    raw = json.loads(body)
    if not isinstance(raw, dict):
        raise ValueError("json: cannot unmarshal into Go value of type structs.Session")
    fields = {str(k).lower(): v for k, v in raw.items()}
    for name in ("name", "node", "behavior", "ttl"):
        if name in fields and not isinstance(fields[name], str | None):
            raise ValueError(f"json: cannot unmarshal into Go struct field Session.{name}")
    if "lockdelay" in fields:
        fields["lockdelay"] = _lock_delay_s(fields["lockdelay"], parse_duration)
    for name in ("nodechecks", "checks"):
        value = fields.get(name)
        if value is not None and (
            not isinstance(value, list) or not all(isinstance(c, str) for c in value)
        ):
            raise ValueError(f"json: cannot unmarshal into Go struct field Session.{name}")
    return fields


def _lock_delay_s(value: object, parse_duration: DurationParser) -> float:
    if isinstance(value, str):
        seconds = parse_duration(value)
        if seconds is None:
            raise ValueError(f"time: invalid duration {json.dumps(value)}")
        nanoseconds = seconds * _NS
    elif isinstance(value, int | float) and not isinstance(value, bool):
        nanoseconds = float(value)
    else:
        raise ValueError("json: cannot unmarshal LockDelay")
    if nanoseconds < _LOCK_DELAY_MIN_THRESHOLD_NS:
        return nanoseconds  # a small number means seconds
    return nanoseconds / _NS


def _checks(fields: dict[str, Any]) -> list[str]:
    """NodeChecks, else the deprecated Checks; serfHealth when neither is given."""
    for name in ("nodechecks", "checks"):
        if name in fields:
            return list(fields[name] or [])
    for check in fields.get("servicechecks") or []:
        name = str(check.get("ID") if isinstance(check, dict) else check)
        raise SessionRefusal(500, f"Missing check '{name}' registration")
    return [SERF_CHECK]
