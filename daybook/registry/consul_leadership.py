"""The leader lock on Consul: a lock key beside the mappings, held through a TTL session.

How Consul behaves here (its session docs and source; the double in daybook_testing
reproduces it): a session with a TTL is invalidated between TTL and 2 x TTL after its last
renew (the server's timer runs 2 x TTL); invalidation, or destroying the session, releases
the key (Behavior=release: the value stays, `Session` clears) and then refuses every
acquire of it for the session's lock-delay. A voluntary `?release=` starts no lock-delay.
Each acquire by a new session increments the key's LockIndex, which is the term number: it
only grows, across every master, for the life of the key.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import replace
from typing import Any

from consul.callback import CB

from daybook import wire
from daybook.errors import ConfigError, WireError
from daybook.model.leadership import Term
from daybook.registry.base import DEFAULT_KEY_PREFIX
from daybook.registry.consul import ConsulRegistry

log = logging.getLogger(__name__)

LEADER_KEY_NAME = "leader"
# Consul's smallest session TTL (agent option session_ttl_min, 10 s by default).
DEFAULT_TTL_S = 10.0
# After the holder's session is invalidated (expiry, or a standby deposing it), nobody may
# take the lock for this long: a leader paused a moment ago gets that much time to notice
# and stop before a successor starts. Consul's default of 15 s alone would blow the 10 s
# failover goal; 1 s keeps a margin against a renew in flight while costing ~1 s of
# failover. A clean release skips it.
DEFAULT_LOCK_DELAY_S = 1.0
_SESSION_NAME_MAX = 200

_ONE_ENTRY = CB.json(one=True, decode="Value")
_INDEXED_ENTRY = CB.json(index=True, one=True, decode="Value")
_SESSION_ID = CB.json(is_id=True)
_ONE_SESSION = CB.json(one=True)
_ANSWER = CB.json()


def leader_key_for(key_prefix: str) -> str:
    """The lock key beside the mappings prefix: `daybook/hosts/` -> `daybook/leader`."""
    parent, _, _ = key_prefix.rstrip("/").rpartition("/")
    return f"{parent}/{LEADER_KEY_NAME}" if parent else LEADER_KEY_NAME


def _whole_seconds(seconds: float, what: str, minimum: float, maximum: float) -> str:
    if not minimum <= seconds <= maximum:
        raise ConfigError(f"{what} must be between {minimum:g} s and {maximum:g} s, not {seconds}")
    return f"{round(seconds * 1000)}ms"


class ConsulLeadership:
    """`Leadership` on Consul: one session per term, the lock key holding the Term as JSON.

    `acquire` reads the key first and creates a session only when the key is free, so a
    standby trying every few seconds costs one read per try; better, it holds `watch` (a
    blocking query on the key) and tries when the key's `Session` clears. The leader calls
    `renew` every `ttl_s / 2`.
    """

    def __init__(
        self,
        registry: ConsulRegistry,
        *,
        lock_key: str | None = None,
        ttl_s: float = DEFAULT_TTL_S,
        lock_delay_s: float = DEFAULT_LOCK_DELAY_S,
        owns_registry: bool = False,
    ) -> None:
        self._registry = registry
        self._key = lock_key or leader_key_for(registry.key_prefix)
        self._ttl = _whole_seconds(ttl_s, "the leader session TTL", 10, 86400)
        self._ttl_s = ttl_s
        self._lock_delay = _whole_seconds(lock_delay_s, "the leader lock-delay", 0, 60)
        self._owns_registry = owns_registry
        self._term: Term | None = None
        # The highest term number this instance has seen, so that a term never goes down,
        # not even when Consul loses its data and the lock key's LockIndex starts over.
        self._highest = 0

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        key_prefix: str = DEFAULT_KEY_PREFIX,
        ttl_s: float = DEFAULT_TTL_S,
        lock_delay_s: float = DEFAULT_LOCK_DELAY_S,
    ) -> ConsulLeadership:
        """For the registry URL (`consul[+https]://...`): the same agent, token, TLS and
        scope, the lock key beside the URL's key prefix."""
        registry = ConsulRegistry.from_url(url, key_prefix=key_prefix)
        return cls(registry, ttl_s=ttl_s, lock_delay_s=lock_delay_s, owns_registry=True)

    @property
    def lock_key(self) -> str:
        return self._key

    @property
    def ttl_s(self) -> float:
        return self._ttl_s

    @property
    def term(self) -> Term | None:
        """The term this instance holds, if any."""
        return self._term

    def acquire(self, holder: str) -> Term | None:
        if self._term is not None and self.renew():
            return self._term
        entry = self._entry()
        if entry is not None and entry.get("Session"):
            return None  # held: no session is made just to be refused
        self._term_of_value(entry)  # its number counts, held or not
        session = self._create_session(holder)
        predicted = self._next_number(int(entry["LockIndex"]) + 1 if entry is not None else 1)
        wanted = Term(number=predicted, holder=holder, since=time.time(), session=session)
        try:
            term = self._take(wanted)
        except BaseException:
            self._destroy(session)
            raise
        if term is None:
            self._destroy(session)  # lost a race, or the lock-delay still runs
            return None
        self._term = term
        self._highest = max(self._highest, term.number)
        log.info("took the leader lock %s: term %d", self._key, term.number)
        return term

    def _take(self, term: Term) -> Term | None:
        """Acquire with the predicted number, then make the value's number the key's real
        LockIndex (an acquire and release by another master in between moves it)."""
        if not self._lock("acquire", term):
            return None
        entry = self._entry()
        if entry is None or entry.get("Session") != term.session:
            return None  # deleted (and so unlocked) at once; the next try starts afresh
        number = self._next_number(int(entry["LockIndex"]))
        if number != term.number:
            # The holder acquiring again writes the value and leaves LockIndex alone.
            term = replace(term, number=number)
            if not self._lock("acquire", term):
                return None
        return term

    def renew(self) -> bool:
        term = self._term
        if term is None:
            return False
        path = f"/v1/session/renew/{term.session}"
        if self._registry.send("renew the leader session", "PUT", path, _ONE_SESSION) is None:
            self._lost(term, "its Consul session is gone (expired or destroyed)")
            return False
        entry = self._entry()
        if entry is None or entry.get("Session") != term.session:
            self._destroy(term.session)
            self._lost(term, f"the lock key {self._key} is no longer held by its session")
            return False
        return True

    def _lost(self, term: Term, why: str) -> None:
        log.warning("lost leadership (term %d): %s", term.number, why)
        self._term = None

    def release(self) -> None:
        """Release the key (no lock-delay: a standby takes over at once), then end the
        session. Safe when nothing is held."""
        term, self._term = self._term, None
        if term is None:
            return
        try:
            self._lock("release", term)
        finally:
            self._destroy(term.session)
        log.info("released the leader lock %s (term %d)", self._key, term.number)

    def leader(self) -> Term | None:
        return self._term_of(self._entry())

    def watch(self, index: int, timeout_s: float) -> tuple[int, Term | None]:
        params: list[tuple[str, str]] = []
        if self._registry.max_wait_s is not None:
            timeout_s = min(timeout_s, self._registry.max_wait_s)
        if index > 0:
            params = [("index", str(index)), ("wait", f"{max(1, round(timeout_s * 1000))}ms")]
        raw_index, entry = self._registry.send(
            f"watch {self._key}", "GET", f"/v1/kv/{self._key}", _INDEXED_ENTRY, params=params
        )
        # Consul never sends 0, but a 0 would turn a standby's loop into a busy one.
        return max(1, int(raw_index)), self._term_of(entry)

    def depose(self, term: Term) -> None:
        """Destroy `term`'s session: Consul releases the key, and the lock-delay runs."""
        if term.session:
            self._destroy(term.session)

    def close(self) -> None:
        if self._owns_registry:
            self._registry.close()

    # -- requests ----------------------------------------------------------------------------

    def _entry(self) -> dict[str, Any] | None:
        entry = self._registry.send(f"read {self._key}", "GET", f"/v1/kv/{self._key}", _ONE_ENTRY)
        return entry if isinstance(entry, dict) else None

    def _lock(self, verb: str, term: Term) -> bool:
        answer = self._registry.send(
            f"{verb} {self._key}",
            "PUT",
            f"/v1/kv/{self._key}",
            _ANSWER,
            params=[(verb, term.session)],
            data=wire.to_json(term),
        )
        return answer is True

    def _create_session(self, holder: str) -> str:
        body = {
            "Name": f"daybook master {holder}"[:_SESSION_NAME_MAX],
            "TTL": self._ttl,
            "LockDelay": self._lock_delay,
            "Behavior": "release",
        }
        data = json.dumps(body)
        session = self._registry.send(
            "create a leader session", "PUT", "/v1/session/create", _SESSION_ID, data=data
        )
        return str(session)

    def _destroy(self, session: str) -> None:
        path = f"/v1/session/destroy/{session}"
        self._registry.send("destroy a leader session", "PUT", path, _ANSWER)

    def _term_of(self, entry: dict[str, Any] | None) -> Term | None:
        """The term the key shows: holder and since from the value, its number the larger
        of the key's LockIndex (Consul's count) and the value's (which carries the count on
        past a Consul that lost its data); None when no session holds the key."""
        term = self._term_of_value(entry)  # a released term's number counts too
        return term if entry is not None and entry.get("Session") else None

    def _term_of_value(self, entry: dict[str, Any] | None) -> Term | None:
        if entry is None:
            return None
        number, session = int(entry["LockIndex"]), str(entry.get("Session") or "")
        try:
            written = wire.from_json(Term, entry.get("Value") or b"")
        except WireError as exc:
            if entry.get("Value"):
                log.warning("the leader key %s holds no readable term: %s", self._key, exc)
            written = Term(number=number, holder="", since=0.0)
        term = replace(written, number=max(number, written.number), session=session)
        self._highest = max(self._highest, term.number)
        return term

    def _next_number(self, lock_index: int) -> int:
        """A new term's number: Consul's LockIndex, unless a term as high was seen already
        (Consul lost its data and counts from 1 again): then the one after it."""
        return max(lock_index, self._highest + 1)
