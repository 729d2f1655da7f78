"""The key ring: every minion and operator key the master knows, accepted, pending or
rejected, and the host name bound to each.

The ring lives in the registry backend's key store (see daybook.registry.keystore), shared
by every master of the fleet, so a key accepted on one master is accepted on all. This
master keeps the whole table in memory: the ZAP handler's `admit` reads memory only and
never waits on the network. Operators' changes are written through with check-and-set
before they are answered; the ZAP thread's notes (a new pending key, a time seen) are
written later by a thread of their own (`save`); other masters' changes come in through
`merge`, fed by a watch on the store. Without a store (tests, and the old single-master
layout) the table is kept in `<data dir>/keys/keyring.json` (0600), which a master with
an empty shared store imports once.

Two threads use it: the ZAP handler asks `admit` during each CURVE handshake, and the
master loop asks `speaks_for` about every report and heartbeat and changes standings on
operator request. Everything goes through one lock; entries are frozen and replaced whole.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from enum import Enum
from pathlib import Path
from typing import Any

from daybook import wire
from daybook.errors import ConflictError, DaybookError, InputError, WireError
from daybook.files import write_atomically
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

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
# Unknown keys are recorded up to this many; beyond, they are held off unrecorded, so a
# stream of fresh keys cannot grow the table without bound.
MAX_PENDING = 1000
# A key seen again is noted (address, time) no more often than this; with a shared store
# that is also the most often one key's "last seen" costs a write.
TOUCH_INTERVAL_S = 60.0
# Check-and-set attempts of one operator change before it gives up.
MAX_CAS_ATTEMPTS = 10


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
        self._max_pending = max_pending
        self._clock = clock
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._keys: dict[str, Key] = {}
        # (role, host) -> key, for accepted keys bound to a host: one key per host and role.
        self._bound: dict[tuple[str, str], str] = {}
        self._dirty = False
        # Told when the table first differs from its file, so a saver need not poll.
        self._on_dirty: Callable[[], None] | None = None
        self._full_warned = False
        # The store's version of each key this table took from it or wrote to it (absent:
        # not in the store yet), which the next check-and-set on that key names.
        self._versions: dict[str, int] = {}
        # Keys changed here and not written to the store yet.
        self._unsaved: set[str] = set()
        # Set while the table is this master's copy, not yet checked against the store.
        self._provisional = False
        self._copy_lock = threading.Lock()
        for entry in entries:
            holder = self._bound.get((entry.role, entry.host)) if entry.host else None
            if entry.state == ACCEPTED and holder is not None:
                log.warning(
                    "%s: %s is accepted twice; keeping %s, the other goes back to pending",
                    path,
                    entry.host,
                    fingerprint(holder),
                )
                self._put(replace(entry, state=PENDING))
            else:
                self._put(entry)
        self._dirty = False
        self._unsaved.clear()

    @classmethod
    def load(cls, path: Path, *, auto_accept: bool) -> KeyRing:
        entries, _ = _read_entries(path)
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
        try:
            snapshot = store.read()
            if not snapshot.keys and cache_path is not None and ring._import(store, cache_path):
                snapshot = store.read()
        except DaybookError as exc:
            entries, _ = _read_entries(cache_path) if cache_path else ([], False)
            log.warning(
                "cannot read the shared key ring %s (%s): admitting the %d keys of this "
                "master's copy %s until it answers",
                store.url,
                exc,
                len(entries),
                cache_path,
            )
            with ring._lock:
                for entry in entries:
                    ring._put(entry, changed=False)
                ring._provisional = True
                ring._dirty = False
            return ring
        ring.merge(snapshot)
        return ring

    def _import(self, store: KeyStore, path: Path) -> bool:
        """Import a single master's own key ring file into the empty store."""
        entries, shared = _read_entries(path)
        if shared or not entries:
            return False
        imported = sum(store.write(entry, 0) is not None for entry in entries)
        log.warning(
            "imported %d of the %d keys of %s into the shared key ring %s; from now on that "
            "file is only this master's copy of the shared one",
            imported,
            len(entries),
            path,
            store.url,
        )
        return True

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
            entry = self._keys.get(public_key)
            if entry is None:
                state = ACCEPTED if self.auto_accept else PENDING
                entry = self._add(
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
        with self._lock:
            entry = self._keys.get(public_key)
            if entry is None or entry.state != ACCEPTED or entry.role != MINION:
                return False
            if entry.host is not None:
                return entry.host == host
            if (MINION, host) in self._bound:
                return False
            self._put(replace(entry, host=host))
            log.info("minion key %s is now bound to host %s", entry.fingerprint, host)
            return True

    def is_operator(self, public_key: str | None) -> bool:
        with self._lock:
            entry = self._keys.get(public_key) if public_key else None
            return entry is not None and entry.role == OPERATOR and entry.state == ACCEPTED

    def get(self, public_key: str) -> Key | None:
        with self._lock:
            return self._keys.get(public_key)

    def hello(self, public_key: str, host: str, role: str, address: str) -> Key | None:
        """A peer says who it is. Returns its entry (None if the table is full).

        An unknown key is recorded with the host it claims: pending, or accepted with
        auto-accept when it is a minion and no other key holds that host. A pending key may
        change its claim; an accepted key keeps the host bound to it.
        """
        now = self._clock()
        with self._lock:
            entry = self._keys.get(public_key)
            if entry is None:
                state = PENDING
                if self.auto_accept and role == MINION and (role, host) not in self._bound:
                    state = ACCEPTED
                entry = self._add(
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
                entry = self._put(replace(entry, host=host, address=address or entry.address))
            elif entry.state == ACCEPTED and entry.host is None and (role, host) not in self._bound:
                entry = self._put(replace(entry, host=host))
            self._touch(entry, address, now)
            return self._keys[public_key]

    # -- operators' changes ---------------------------------------------------------------------

    def listing(self) -> KeyListing:
        with self._lock:
            entries = sorted(
                self._keys.values(), key=lambda e: (e.role, e.host or "", e.first_seen)
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
                holder = self._bound.get((entry.role, entry.host))
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

        With a shared store the change is written with check-and-set before it counts;
        when another master changed the entry meanwhile, the store is read again and the
        change decided again on what is there now (which may refuse it). Returns the
        entry before and after.
        """
        for _attempt in range(MAX_CAS_ATTEMPTS):
            with self._lock:
                before = self._select(selector, prefer)
                after = decide(before)
                version = self._versions.get(before.public_key, 0)
                if after is before:
                    return before, after
                if self.store is None:
                    self._apply(before, after, None)
            if self.store is None:
                self.save()
                return before, after
            written = self._write_through(before, after, version)
            if written is not None:
                with self._lock:
                    self._apply(before, after, written)
                self._save_copy(self.store)
                return before, after
            log.info("the key %s changed on another master; deciding again", before.fingerprint)
            self.merge(self.store.read())
        raise ConflictError(
            f"gave up changing the key {selector}: other masters changed it "
            f"{MAX_CAS_ATTEMPTS} times meanwhile"
        )

    def _write_through(self, before: Key, after: Key | None, version: int) -> int | None:
        """Write one change to the store; its new version (0 once deleted), None when the
        check-and-set lost."""
        assert self.store is not None
        if after is None:
            return 0 if self.store.delete(before.public_key, version) else None
        return self.store.write(after, version)

    def _apply(self, before: Key, after: Key | None, version: int | None) -> None:
        """Make an operator's change in the table (under the lock); `version` is the
        store's new version of the entry, None without a store."""
        if after is None:
            self._remove(before)
            self._versions.pop(before.public_key, None)
            self._unsaved.discard(before.public_key)
            if self.store is None:
                self._mark_dirty()
            return
        self._put(after, changed=self.store is None)
        if version is not None:
            self._versions[after.public_key] = version
            self._unsaved.discard(after.public_key)

    def _select(self, selector: str, prefer: tuple[str, ...]) -> Key:
        """The one entry `selector` (a fingerprint, or a host name) names.

        By host name, the states in `prefer` are tried in order (`accept web-1` means the
        pending key of web-1 even if a rejected one exists too); two keys in the first state
        that has any are ambiguous, and the fingerprint must be used.
        """
        if is_fingerprint(selector):
            for entry in self._keys.values():
                if entry.fingerprint == selector:
                    return entry
            raise KeySelectionError(f"no key has the fingerprint {selector}")
        if not is_valid_host(selector):
            raise KeySelectionError(f"{selector!r} is neither a host name nor a key fingerprint")
        named = [e for e in self._keys.values() if (e.host or "").lower() == selector.lower()]
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

    # -- table upkeep (under the lock) ----------------------------------------------------------

    def _add(
        self,
        public_key: str,
        *,
        role: str,
        state: str,
        host: str | None,
        address: str | None,
        now: float,
    ) -> Key | None:
        if state == PENDING:
            pending = sum(1 for e in self._keys.values() if e.state == PENDING)
            if pending >= self._max_pending:
                if not self._full_warned:
                    self._full_warned = True
                    log.warning(
                        "%d keys are pending already; new keys are held off unrecorded until "
                        "some are accepted, rejected or deleted",
                        pending,
                    )
                return None
        address = address[:MAX_ADDRESS_LEN] if address else None
        return self._put(Key(public_key, role, state, host, address, now, now))

    def _put(self, entry: Key, *, changed: bool = True) -> Key:
        """Put `entry` in the table; `changed` says the store does not have it yet."""
        old = self._keys.get(entry.public_key)
        if old is not None:
            self._remove(old)
        self._keys[entry.public_key] = entry
        if entry.state == ACCEPTED and entry.host is not None:
            self._bound[(entry.role, entry.host)] = entry.public_key
        if entry.state == PENDING:
            self._full_warned = False
        if changed:
            self._unsaved.add(entry.public_key)
            self._mark_dirty()
        return entry

    def _remove(self, entry: Key) -> None:
        self._keys.pop(entry.public_key, None)
        if entry.host is not None and self._bound.get((entry.role, entry.host)) == entry.public_key:
            del self._bound[(entry.role, entry.host)]

    def _touch(self, entry: Key, address: str | None, now: float) -> None:
        address = address[:MAX_ADDRESS_LEN] if address else entry.address
        if address != entry.address or now - entry.last_seen >= TOUCH_INTERVAL_S:
            self._keys[entry.public_key] = replace(entry, address=address, last_seen=now)
            self._unsaved.add(entry.public_key)
            self._mark_dirty()

    def _mark_dirty(self) -> None:
        if not self._dirty:
            self._dirty = True
            if self._on_dirty is not None:
                self._on_dirty()

    # -- the file -------------------------------------------------------------------------------

    @property
    def dirty(self) -> bool:
        """Whether the table holds changes its file does not have yet."""
        return self._dirty

    def when_dirty(self, notify: Callable[[], None]) -> None:
        """Call `notify` (from whichever thread made the change) each time the table goes
        from saved to changed; it must be quick and must not call back into the ring."""
        self._on_dirty = notify

    def save_if_dirty(self) -> None:
        self.flush()

    def flush(self) -> bool:
        """`save` if anything changed; False when saving failed (it is tried again)."""
        if self._dirty:
            return self.save()
        return True

    def save(self) -> bool:
        """Write the table's changes: to the shared store (each changed key with
        check-and-set) or to the file (owner-only, atomically). Standing changes are
        written at once; the ZAP thread's notes (a new pending key, a time seen) on the
        next flush. False when the store or the file could not be written: the changes
        stay marked and are tried again."""
        if self.store is not None:
            saved = self._save_to_store(self.store)
            self._save_copy(self.store)
            return saved
        if self.path is None:
            return True
        with self._write_lock:
            with self._lock:
                self._dirty = False
                document = {
                    "format": FORMAT_VERSION,
                    "keys": [wire.to_builtins(key) for key in self._keys.values()],
                }
            try:
                _write_private(self.path, json.dumps(document, indent=1).encode())
            except OSError as exc:
                with self._lock:
                    self._mark_dirty()
                log.error("cannot save the key ring %s: %s", self.path, exc)
                return False
        return True

    def _save_to_store(self, store: KeyStore) -> bool:
        with self._write_lock:
            with self._lock:
                batch = [
                    (self._keys[key], self._versions.get(key, 0))
                    for key in sorted(self._unsaved)
                    if key in self._keys
                ]
                self._unsaved.clear()
                self._dirty = False
            lost = False
            for number, (entry, version) in enumerate(batch):
                try:
                    written = store.write(entry, version)
                except DaybookError as exc:
                    with self._lock:
                        for unsaved, _ in batch[number:]:
                            if unsaved.public_key in self._keys:
                                self._unsaved.add(unsaved.public_key)
                        self._mark_dirty()
                    log.error("cannot write to the shared key ring %s: %s", store.url, exc)
                    return False
                if written is None:
                    lost = True  # another master changed the entry first: its change stands
                    continue
                with self._lock:
                    self._versions[entry.public_key] = max(
                        written, self._versions.get(entry.public_key, 0)
                    )
        if lost:
            try:
                self.merge(store.read())
            except DaybookError as exc:
                log.error("cannot read the shared key ring %s: %s", store.url, exc)
                return False
        return True

    # -- other masters' changes -----------------------------------------------------------------

    def merge(self, snapshot: KeySnapshot) -> int:
        """Take the store's current keys in: another master's accept, reject, delete or
        new pending key. A change of this master's not written yet stands over the
        entry it was made on; over an entry another master changed since, theirs stands.
        Returns how many entries changed here."""
        with self._lock:
            changed = self._drop_unconfirmed(snapshot)
            self._write_back_if_lost(snapshot)
            for public_key, stored in snapshot.keys.items():
                based_on = self._versions.get(public_key, 0)
                if public_key in self._unsaved:
                    if based_on == stored.version:
                        continue
                    self._unsaved.discard(public_key)
                self._versions[public_key] = stored.version
                if self._keys.get(public_key) != stored.key:
                    changed += 1
                    self._take(stored.key)
            for public_key in [k for k in self._versions if k not in snapshot.keys]:
                # It was in the store and is gone: deleted on another master.
                changed += 1
                self._versions.pop(public_key)
                self._unsaved.discard(public_key)
                gone = self._keys.get(public_key)
                if gone is not None:
                    self._remove(gone)
            if not self._unsaved:
                self._dirty = False
        if changed and self.store is not None:
            self._save_copy(self.store)
        return changed

    def _drop_unconfirmed(self, snapshot: KeySnapshot) -> int:
        """On the first answer after starting from this master's copy (under the lock):
        the copy's keys the store does not have were deleted meanwhile."""
        if not self._provisional:
            return 0
        self._provisional = False
        dropped = 0
        for entry in list(self._keys.values()):
            if not (entry.public_key in snapshot.keys or entry.public_key in self._unsaved):
                dropped += 1
                self._remove(entry)
        return dropped

    def _write_back_if_lost(self, snapshot: KeySnapshot) -> None:
        """A store that lost its data (a Consul restarted empty, or restored from an old
        snapshot) has none of the keys this master knows, and an index below their
        versions, which Consul never gives otherwise: deletes raise the index. Then the
        keys are written back rather than forgotten (under the lock)."""
        known = self._versions
        if not known or snapshot.index >= max(known.values()):
            return
        if any(public_key in snapshot.keys for public_key in known):
            return
        log.warning(
            "the shared key ring %s lost its keys (its index went back to %d from %d): "
            "writing back the %d keys this master knows",
            self.store.url if self.store is not None else "",
            snapshot.index,
            max(known.values()),
            len(known),
        )
        self._unsaved.update(k for k in known if k in self._keys)
        self._versions = {}
        self._dirty = False
        self._mark_dirty()

    def _save_copy(self, store: KeyStore) -> None:
        """Write this master's copy of the shared ring (see `open`), marked as a copy."""
        if self.path is None:
            return
        with self._copy_lock:
            with self._lock:
                document = {
                    "format": FORMAT_VERSION,
                    "shared": store.url,
                    "keys": [wire.to_builtins(key) for key in self._keys.values()],
                }
            try:
                _write_private(self.path, json.dumps(document, indent=1).encode())
            except OSError as exc:
                log.error("cannot save this master's copy of the key ring %s: %s", self.path, exc)

    def _take(self, entry: Key) -> None:
        """Put another master's entry in the table (under the lock)."""
        holder = self._bound.get((entry.role, entry.host)) if entry.host else None
        if entry.state == ACCEPTED and holder not in (None, entry.public_key):
            log.warning(
                "the shared key ring has two accepted %s keys for %s, %s and %s; delete one",
                entry.role,
                entry.host,
                fingerprint(holder or ""),
                entry.fingerprint,
            )
        self._put(entry, changed=False)


def _read_entries(path: Path) -> tuple[list[Key], bool]:
    """The entries of a key ring file (none if it is missing), and whether it is a
    master's copy of a shared ring rather than a single master's own."""
    try:
        document: Any = json.loads(path.read_bytes())
    except FileNotFoundError:
        return [], False
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read the key ring {path}: {exc}") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT_VERSION:
        raise InputError(f"{path} is not a key ring this master knows")
    entries = []
    for item in document.get("keys", []):
        try:
            # Checked as if it came off the network: the file may have been edited.
            entries.append(wire.from_builtins(Key, item))
        except WireError as exc:
            log.warning("%s: skipping an invalid entry: %s", path, exc)
    return entries, bool(document.get("shared"))


def _write_private(path: Path, data: bytes) -> None:
    write_atomically(path, data, mode=0o600, durable=False)
