"""The key table: the keys this master knows, in memory, and what of it changed since it
was last saved.

It keeps two rules that hold however a key got in (a handshake, an operator, another
master): an accepted key holds its host, one key per host and role; and at most
`max_pending` keys are pending, so a stream of fresh keys cannot grow it without bound.
It knows nothing of files or stores: the key ring (master.keyring) asks and changes it,
and its persistence (master.keyring_store) saves it and merges other masters' changes in.

Every method is called with `lock` held; that one lock guards the whole table. Entries are
frozen and replaced whole.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from daybook.model.keys import ACCEPTED, MAX_ADDRESS_LEN, PENDING, Key

log = logging.getLogger(__name__)


class KeyTable:
    def __init__(self, *, max_pending: int) -> None:
        self.lock = threading.Lock()
        self._max_pending = max_pending
        self._keys: dict[str, Key] = {}
        # (role, host) -> key, for accepted keys bound to a host: one key per host and role.
        self._bound: dict[tuple[str, str], str] = {}
        # Key -> the host it was found to speak for (the key ring's `speaks_for`), until the
        # key changes. Read without the lock, on every message a minion sends.
        self.speaking: dict[str, str] = {}
        self._full_warned = False
        # Keys changed here and not written to the shared store yet.
        self.unsaved: set[str] = set()
        self._dirty = False
        # Whether a change other than a note (a key's standing, binding or arrival) waits.
        self._urgent = False
        # Told when the table first differs from what was saved, so a saver need not poll.
        self._on_dirty: Callable[[], None] | None = None

    def get(self, public_key: str) -> Key | None:
        return self._keys.get(public_key)

    def entries(self) -> list[Key]:
        return list(self._keys.values())

    def holder(self, role: str, host: str) -> str | None:
        """The accepted key bound to `host` for `role`, if any."""
        return self._bound.get((role, host))

    def add(
        self,
        public_key: str,
        *,
        role: str,
        state: str,
        host: str | None,
        address: str | None,
        now: float,
    ) -> Key | None:
        """Record a new key; None when it would be one pending key too many."""
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
        return self.put(Key(public_key, role, state, host, address, now, now))

    def put(self, entry: Key, *, changed: bool = True) -> Key:
        """Put `entry` in the table; `changed` says the store does not have it yet."""
        old = self._keys.get(entry.public_key)
        if old is not None:
            self.remove(old)
        self.speaking.pop(entry.public_key, None)
        self._keys[entry.public_key] = entry
        if entry.state == ACCEPTED and entry.host is not None:
            self._bound[(entry.role, entry.host)] = entry.public_key
        if entry.state == PENDING:
            self._full_warned = False
        if changed:
            self.unsaved.add(entry.public_key)
            self.mark_dirty()
        return entry

    def note(self, entry: Key) -> None:
        """Replace an entry by itself with new notes (address, time seen): its standing and
        host are the same, so the bindings stay as they are."""
        self._keys[entry.public_key] = entry
        self.unsaved.add(entry.public_key)
        self.mark_dirty(urgent=False)

    def remove(self, entry: Key) -> None:
        self._keys.pop(entry.public_key, None)
        self.speaking.pop(entry.public_key, None)
        if entry.host is not None and self._bound.get((entry.role, entry.host)) == entry.public_key:
            del self._bound[(entry.role, entry.host)]

    # -- what changed ----------------------------------------------------------------------------

    @property
    def dirty(self) -> bool:
        """Whether the table holds changes not saved yet."""
        return self._dirty

    def when_dirty(self, notify: Callable[[], None]) -> None:
        self._on_dirty = notify

    @property
    def urgent(self) -> bool:
        """Whether the changes not saved yet are more than notes (times and addresses seen)."""
        return self._urgent

    def mark_dirty(self, *, urgent: bool = True) -> None:
        """Note that the table differs from what was saved; the saver is told the first
        time, and again when a note is joined by an urgent change."""
        told = self._dirty and (self._urgent or not urgent)
        self._dirty = True
        self._urgent = self._urgent or urgent
        if not told and self._on_dirty is not None:
            self._on_dirty()

    def clear_dirty(self) -> None:
        self._dirty = self._urgent = False

    def mark_saved(self) -> None:
        """Everything in the table counts as saved: nothing is dirty or unsaved."""
        self.unsaved.clear()
        self._dirty = self._urgent = False
