"""The key ring: every minion and operator key the master knows, accepted, pending or
rejected, and the host name bound to each, with the rules for who may get in and speak.

The ring lives in the registry backend's key store (see daybook.registry.keystore), shared
by every master of the fleet, so a key accepted on one master is accepted on all. This
master keeps the whole table in memory (master.key_table): the ZAP handler's `admit` reads
memory only and never waits on the network. Operators' changes are written through with
check-and-set before they are answered; the ZAP thread's notes (a new pending key, a time
seen) are written later by a thread of their own (`save`); other masters' changes come in
through `merge`, fed by a watch on the store. That side lives in master.keyring_store;
this class hands its calls on. Without a store (tests, and the old single-master layout)
the table is kept in `<data dir>/keys/keyring.json` (0600), which a master with an empty
shared store imports once.

Two threads use it: the ZAP handler asks `admit` during each CURVE handshake, and the
master loop asks `speaks_for` about every report and heartbeat and changes standings on
operator request. Everything goes through the table's one lock; entries are frozen and
replaced whole.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from enum import Enum
from pathlib import Path

from daybook.errors import InputError
from daybook.model.keys import (
    ACCEPTED,
    MAX_ADDRESS_LEN,
    MINION,
    OPERATOR,
    PENDING,
    REJECTED,
    Key,
    KeyListing,
    fingerprint,
    is_fingerprint,
)
from daybook.model.patterns import is_valid_host
from daybook.net.transport import CURVE_USER_PREFIX, DOMAIN_CONTROL, DOMAIN_PUBLISH, DOMAIN_RESULTS
from daybook.registry.keystore import KeySnapshot, KeyStore
from master.key_table import KeyTable
from master.keyring_store import KeyRingFile, KeyRingStore

log = logging.getLogger(__name__)

# Unknown keys are recorded up to this many; beyond, they are held off unrecorded, so a
# stream of fresh keys cannot grow the table without bound.
MAX_PENDING = 1000
# A key seen again is noted (address, time) no more often than this; with a shared store
# that is also the most often one key's "last seen" costs a write.
TOUCH_INTERVAL_S = 60.0


class KeySelectionError(InputError):
    """A key selector that matches no key, or more than one, or a change that would give
    one host two keys. Nothing was changed."""


class Admission(Enum):
    """The ZAP answer for one handshake: in, held off for now (the peer retries), or out."""

    ALLOW = "200"
    HOLD = "300"
    DENY = "400"


@dataclass(frozen=True)
class KeyChange:
    """What an operator's keys command did: the entry (as it is now, or was if deleted),
    and whether a minion that was accepted lost its standing (so it must be cut off)."""

    entry: Key
    cut_off: bool


class KeyRing:
    def __init__(
        self,
        path: Path | None,
        *,
        auto_accept: bool,
        entries: Iterable[Key] = (),
        max_pending: int = MAX_PENDING,
        clock: Callable[[], float] = time.time,
        store: KeyStore | None = None,
    ) -> None:
        self.path = path
        # The shared key ring; when set, it is where changes go, and `path` holds this
        # master's copy of it (see `open`).
        self.store = store
        self.auto_accept = auto_accept
        self._clock = clock
        self._table = KeyTable(max_pending=max_pending)
        self._lock = self._table.lock
        self._file = KeyRingFile(path) if path is not None else None
        self._shared = (
            KeyRingStore(self._table, store, copy=self._file) if store is not None else None
        )
        for entry in entries:
            holder = self._table.holder(entry.role, entry.host) if entry.host else None
            if entry.state == ACCEPTED and holder is not None:
                log.warning(
                    "%s: %s is accepted twice; keeping %s, the other goes back to pending",
                    path,
                    entry.host,
                    fingerprint(holder),
                )
                self._table.put(replace(entry, state=PENDING))
            else:
                self._table.put(entry)
        self._table.mark_saved()

    @classmethod
    def load(cls, path: Path, *, auto_accept: bool) -> KeyRing:
        entries, _ = KeyRingFile(path).read()
        return cls(path, auto_accept=auto_accept, entries=entries)

    @classmethod
    def open(cls, store: KeyStore, *, auto_accept: bool, cache_path: Path | None = None) -> KeyRing:
        """The ring shared through `store`, with this master's copy of it at `cache_path`.

        The copy lets a master restarted while the store is unreachable (Consul down)
        still admit the keys it knew; the store's answer replaces it as soon as it comes.
        A file there from before keys were shared (a single master's own key ring) is
        imported once into an empty store; a copy of the shared ring never is, so keys
        deleted on other masters meanwhile do not come back.
        """
        ring = cls(cache_path, auto_accept=auto_accept, store=store)
        assert ring._shared is not None
        ring._shared.load()
        return ring

    # -- the ZAP handler's questions -----------------------------------------------------------

    def admit(self, domain: str, public_key: str, address: str) -> Admission:
        """Whether a CURVE handshake with `public_key` from `address` may complete.

        The control socket admits any key: there, each request is judged on its own, and an
        unknown key may only say hello. Events and results are for accepted minions only;
        an unknown key is recorded as pending (or accepted, with auto-accept), and a key not
        accepted is held off, so it tries again and gets in as soon as it is accepted.
        """
        if domain == DOMAIN_CONTROL:
            return Admission.ALLOW
        if domain not in (DOMAIN_PUBLISH, DOMAIN_RESULTS):
            return Admission.DENY
        now = self._clock()
        with self._lock:
            entry = self._table.get(public_key)
            if entry is None:
                state = ACCEPTED if self.auto_accept else PENDING
                entry = self._table.add(
                    public_key, role=MINION, state=state, host=None, address=address, now=now
                )
                if entry is None:
                    return Admission.HOLD
                if state == ACCEPTED:
                    log.warning(
                        "auto-accepted the new minion key %s from %s", entry.fingerprint, address
                    )
                else:
                    log.warning(
                        "a new minion key %s from %s is pending; accept it with "
                        "`daybook keys accept %s`",
                        entry.fingerprint,
                        address,
                        entry.fingerprint,
                    )
            else:
                self._touch(entry, address, now)
            if entry.role != MINION:
                return Admission.DENY
            return Admission.ALLOW if entry.state == ACCEPTED else Admission.HOLD

    # -- the master loop's questions -----------------------------------------------------------

    def speaks_for(self, user_id: str, host: str) -> bool:
        """Whether the peer named `user_id` may report or heartbeat as `host`.

        Only an accepted minion key may, and only for the host bound to it. A key accepted
        before it named its host (auto-accept, or accepted by fingerprint) is bound to the
        first host it speaks for, unless another key already holds that host.
        """
        if not user_id.startswith(CURVE_USER_PREFIX):
            return False
        public_key = user_id[len(CURVE_USER_PREFIX) :]
        # Every heartbeat and report asks: an answer found stands until the key changes,
        # and is read without the lock (0.2 against 0.7 us, warm).
        if self._table.speaking.get(public_key) == host:
            return True
        with self._lock:
            entry = self._table.get(public_key)
            if entry is None or entry.state != ACCEPTED or entry.role != MINION:
                return False
            if entry.host is None:
                if self._table.holder(MINION, host) is not None:
                    return False
                self._table.put(replace(entry, host=host))
                log.info("minion key %s is now bound to host %s", entry.fingerprint, host)
            elif entry.host != host:
                return False
            self._table.speaking[public_key] = host
            return True

    def is_operator(self, public_key: str | None) -> bool:
        with self._lock:
            entry = self._table.get(public_key) if public_key else None
            return entry is not None and entry.role == OPERATOR and entry.state == ACCEPTED

    def get(self, public_key: str) -> Key | None:
        with self._lock:
            return self._table.get(public_key)

    def hello(self, public_key: str, host: str, role: str, address: str) -> Key | None:
        """A peer says who it is. Returns its entry (None if the table is full).

        An unknown key is recorded with the host it claims: pending, or accepted with
        auto-accept when it is a minion and no other key holds that host. A pending key may
        change its claim; an accepted key keeps the host bound to it.
        """
        now = self._clock()
        with self._lock:
            entry = self._table.get(public_key)
            if entry is None:
                state = PENDING
                if self.auto_accept and role == MINION and self._table.holder(role, host) is None:
                    state = ACCEPTED
                entry = self._table.add(
                    public_key, role=role, state=state, host=host, address=address, now=now
                )
                if entry is not None:
                    log.warning(
                        "%s %s key %s from %s, claiming host %s",
                        "auto-accepted the new" if state == ACCEPTED else "pending: a new",
                        role,
                        entry.fingerprint,
                        address or "an unknown address",
                        host,
                    )
                return entry
            if entry.role != role:
                return entry
            if entry.state == PENDING and entry.host != host:
                entry = self._table.put(replace(entry, host=host, address=address or entry.address))
            elif (
                entry.state == ACCEPTED
                and entry.host is None
                and self._table.holder(role, host) is None
            ):
                entry = self._table.put(replace(entry, host=host))
            self._touch(entry, address, now)
            return self._table.get(public_key)

    # -- operators' changes ---------------------------------------------------------------------

    def listing(self) -> KeyListing:
        with self._lock:
            entries = sorted(
                self._table.entries(), key=lambda e: (e.role, e.host or "", e.first_seen)
            )
        return KeyListing(
            accepted=tuple(e for e in entries if e.state == ACCEPTED),
            pending=tuple(e for e in entries if e.state == PENDING),
            rejected=tuple(e for e in entries if e.state == REJECTED),
        )

    def accept(self, selector: str) -> KeyChange:
        def accepted(entry: Key) -> Key:
            if entry.state == ACCEPTED:
                return entry
            if entry.host is not None:
                holder = self._table.holder(entry.role, entry.host)
                if holder is not None and holder != entry.public_key:
                    raise KeySelectionError(
                        f"{entry.host} already has an accepted {entry.role} key "
                        f"{fingerprint(holder)}; delete that one first"
                    )
            return replace(entry, state=ACCEPTED)

        before, entry = self._change(selector, (PENDING, REJECTED), accepted)
        assert entry is not None
        if before is not entry:
            log.warning("accepted the %s", entry.describe())
        return KeyChange(entry, cut_off=False)

    def reject(self, selector: str) -> KeyChange:
        before, entry = self._change(
            selector, (ACCEPTED, PENDING), lambda e: replace(e, state=REJECTED)
        )
        assert entry is not None
        log.warning("rejected the %s", entry.describe())
        return KeyChange(entry, cut_off=before.state == ACCEPTED and entry.role == MINION)

    def delete(self, selector: str) -> KeyChange:
        entry, _ = self._change(selector, (ACCEPTED, PENDING, REJECTED), lambda e: None)
        log.warning("deleted the %s", entry.describe())
        return KeyChange(entry, cut_off=entry.state == ACCEPTED and entry.role == MINION)

    def _change(
        self, selector: str, prefer: tuple[str, ...], decide: Callable[[Key], Key | None]
    ) -> tuple[Key, Key | None]:
        """Apply an operator's change to the entry `selector` names: `decide` gives the
        entry as it should be (None: deleted; the same entry: nothing to do) or raises.

        With a shared store the change is written with check-and-set before it counts
        (see KeyRingStore.change); without, it is made here and saved to the file.
        Returns the entry before and after.
        """

        def choose() -> tuple[Key, Key | None]:
            before = self._select(selector, prefer)
            return before, decide(before)

        if self._shared is not None:
            return self._shared.change(choose, selector)
        with self._lock:
            before, after = choose()
            if after is before:
                return before, after
            if after is None:
                self._table.remove(before)
                self._table.unsaved.discard(before.public_key)
                self._table.mark_dirty()
            else:
                self._table.put(after)
        self.save()
        return before, after

    def _select(self, selector: str, prefer: tuple[str, ...]) -> Key:
        """The one entry `selector` (a fingerprint, or a host name) names.

        By host name, the states in `prefer` are tried in order (`accept web-1` means the
        pending key of web-1 even if a rejected one exists too); two keys in the first state
        that has any are ambiguous, and the fingerprint must be used.
        """
        if is_fingerprint(selector):
            for entry in self._table.entries():
                if entry.fingerprint == selector:
                    return entry
            raise KeySelectionError(f"no key has the fingerprint {selector}")
        if not is_valid_host(selector):
            raise KeySelectionError(f"{selector!r} is neither a host name nor a key fingerprint")
        named = [e for e in self._table.entries() if (e.host or "").lower() == selector.lower()]
        if not named:
            raise KeySelectionError(f"no key claims the host {selector}")
        for state in (*prefer, *(s for s in (ACCEPTED, PENDING, REJECTED) if s not in prefer)):
            matches = [e for e in named if e.state == state]
            if len(matches) == 1:
                return matches[0]
            if matches:
                listed = ", ".join(f"{e.fingerprint} ({e.role})" for e in matches)
                raise KeySelectionError(
                    f"{len(matches)} {state} keys claim the host {selector}: {listed}; "
                    "name one by its fingerprint"
                )
        raise AssertionError("unreachable")  # pragma: no cover

    def _touch(self, entry: Key, address: str | None, now: float) -> None:
        """Note that `entry` was seen again (under the lock), at most every TOUCH_INTERVAL_S
        unless its address changed."""
        address = address[:MAX_ADDRESS_LEN] if address else entry.address
        if address != entry.address or now - entry.last_seen >= TOUCH_INTERVAL_S:
            self._table.note(replace(entry, address=address, last_seen=now))

    # -- saving and merging (handed on to the file or the shared store) ------------------------

    @property
    def dirty(self) -> bool:
        """Whether the table holds changes its file (or the store) does not have yet."""
        return self._table.dirty

    @property
    def urgent(self) -> bool:
        """Whether the unsaved changes are more than notes of a key seen again."""
        return self._table.urgent

    def when_dirty(self, notify: Callable[[], None]) -> None:
        """Call `notify` (from whichever thread made the change) each time the table goes
        from saved to changed, and when its changes become urgent; it must be quick and must
        not call back into the ring."""
        self._table.when_dirty(notify)

    def save_if_dirty(self) -> None:
        self.flush()

    def flush(self) -> bool:
        """`save` if anything changed; False when saving failed (it is tried again)."""
        if self._table.dirty:
            return self.save()
        return True

    def save(self) -> bool:
        """Write the table's changes: to the shared store (each changed key with
        check-and-set) or to the file (owner-only, atomically). Standing changes are
        written at once; the ZAP thread's notes (a new pending key, a time seen) on the
        next flush. False when the store or the file could not be written: the changes
        stay marked and are tried again."""
        if self._shared is not None:
            return self._shared.save()
        if self._file is None:
            return True
        return self._file.save(self._table)

    def merge(self, snapshot: KeySnapshot) -> int:
        """Take the shared store's current keys in (see KeyRingStore.merge); returns how
        many entries changed here."""
        assert self._shared is not None, "only a ring with a shared store merges"
        return self._shared.merge(snapshot)
