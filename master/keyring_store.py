"""Where the key ring is kept: its file (a single master's own ring, or this master's copy
of the shared one) and the shared key store every master of the fleet writes to.

`KeyRingStore` keeps this master's key table in step with the store (see
daybook.registry.keystore): it opens the table from the store (or from the copy while the
store does not answer), imports an old single master's file once, writes the table's
changes with check-and-set, merges other masters' changes from the watch, and writes the
keys back when the store lost them. Its methods that touch the store are called from the
master loop and the key ring's own threads (master.keyring_sync), never from the ZAP
handler: only the table's lock is shared with it, and no network call is made under it.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from daybook import wire
from daybook.errors import ConflictError, DaybookError, InputError, WireError
from daybook.files import write_atomically
from daybook.model.keys import ACCEPTED, Key, fingerprint
from daybook.registry.keystore import KeySnapshot, KeyStore
from master.key_table import KeyTable

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
# Check-and-set attempts of one operator change before it gives up.
MAX_CAS_ATTEMPTS = 10


class KeyRingFile:
    """A key ring file (JSON, owner-only, written atomically)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        # One write at a time, each of the table as it was when the write began.
        self._lock = threading.Lock()

    def read(self) -> tuple[list[Key], bool]:
        """The entries of the file (none if it is missing), and whether it is a master's
        copy of a shared ring rather than a single master's own."""
        try:
            document: Any = json.loads(self.path.read_bytes())
        except FileNotFoundError:
            return [], False
        except (OSError, ValueError) as exc:
            raise InputError(f"cannot read the key ring {self.path}: {exc}") from None
        if not isinstance(document, dict) or document.get("format") != FORMAT_VERSION:
            raise InputError(f"{self.path} is not a key ring this master knows")
        entries = []
        for item in document.get("keys", []):
            try:
                # Checked as if it came off the network: the file may have been edited.
                entries.append(wire.from_builtins(Key, item))
            except WireError as exc:
                log.warning("%s: skipping an invalid entry: %s", self.path, exc)
        return entries, bool(document.get("shared"))

    def save(self, table: KeyTable) -> bool:
        """Write the table as this master's own key ring; False when the file could not be
        written (the table stays dirty, and is tried again)."""
        try:
            self._write(table, shared=None)
        except OSError as exc:
            with table.lock:
                table.mark_dirty()
            log.error("cannot save the key ring %s: %s", self.path, exc)
            return False
        return True

    def save_copy(self, table: KeyTable, shared: str) -> None:
        """Write the table as this master's copy of the ring shared at `shared`."""
        try:
            self._write(table, shared=shared)
        except OSError as exc:
            log.error("cannot save this master's copy of the key ring %s: %s", self.path, exc)

    def _write(self, table: KeyTable, *, shared: str | None) -> None:
        with self._lock:
            with table.lock:
                document: dict[str, Any] = {"format": FORMAT_VERSION}
                if shared is None:
                    table.clear_dirty()  # the copy of a shared ring is not what saves it
                else:
                    document["shared"] = shared
                document["keys"] = [wire.to_builtins(key) for key in table.entries()]
            write_atomically(
                self.path, json.dumps(document, indent=1).encode(), mode=0o600, durable=False
            )


class KeyRingStore:
    """The key table kept in step with the shared key store, and with this master's copy of
    it (`copy`), which lets a master restarted while the store is unreachable (Consul down)
    still admit the keys it knew."""

    def __init__(self, table: KeyTable, store: KeyStore, *, copy: KeyRingFile | None) -> None:
        self.store = store
        self._table = table
        self._copy = copy
        self._write_lock = threading.Lock()
        # The store's version of each key the table took from it or wrote to it (absent:
        # not in the store yet), which the next check-and-set on that key names.
        self._versions: dict[str, int] = {}
        # Set while the table is this master's copy, not yet checked against the store.
        self._provisional = False

    def load(self) -> None:
        """Fill the table from the store; while it does not answer, from the copy.

        A file at the copy's place from before keys were shared (a single master's own key
        ring) is imported once into an empty store; a copy of the shared ring never is, so
        keys deleted on other masters meanwhile do not come back.
        """
        try:
            snapshot = self.store.read()
            if not snapshot.keys and self._copy is not None and self._import(self._copy):
                snapshot = self.store.read()
        except DaybookError as exc:
            entries, _ = self._copy.read() if self._copy else ([], False)
            log.warning(
                "cannot read the shared key ring %s (%s): admitting the %d keys of this "
                "master's copy %s until it answers",
                self.store.url,
                exc,
                len(entries),
                self._copy.path if self._copy else None,
            )
            with self._table.lock:
                for entry in entries:
                    self._table.put(entry, changed=False)
                self._provisional = True
                self._table.clear_dirty()
            return
        self.merge(snapshot)

    def _import(self, old: KeyRingFile) -> bool:
        """Import a single master's own key ring file into the empty store."""
        entries, shared = old.read()
        if shared or not entries:
            return False
        imported = sum(self.store.write(entry, 0) is not None for entry in entries)
        log.warning(
            "imported %d of the %d keys of %s into the shared key ring %s; from now on that "
            "file is only this master's copy of the shared one",
            imported,
            len(entries),
            old.path,
            self.store.url,
        )
        return True

    # -- this master's changes ------------------------------------------------------------------

    def save(self) -> bool:
        """Write each key changed here with check-and-set, then the copy. False when the
        store could not be written: the changes stay marked and are tried again."""
        saved = self._write_unsaved()
        self.save_copy()
        return saved

    def _write_unsaved(self) -> bool:
        table = self._table
        with self._write_lock:
            with table.lock:
                batch = []
                for key in sorted(table.unsaved):
                    entry = table.get(key)
                    if entry is None:
                        table.unsaved.discard(key)  # removed since: nothing to write
                    else:
                        batch.append((entry, self._versions.get(key, 0)))
                # The keys stay unsaved until their write lands: a watch answer merged
                # meanwhile must not put the entry back as it was before this change.
                table.clear_dirty()
            try:
                versions = self.store.write_batch(batch)
            except DaybookError as exc:
                # What did land reads back as another master's change, which is the same.
                with table.lock:
                    table.mark_dirty()
                log.error("cannot write to the shared key ring %s: %s", self.store.url, exc)
                return False
            lost = False
            for (entry, _version), written in zip(batch, versions, strict=True):
                if written is None:
                    lost = True  # another master changed the entry first: its change stands
                    continue
                with table.lock:
                    self._versions[entry.public_key] = max(
                        written, self._versions.get(entry.public_key, 0)
                    )
                    # Changed again meanwhile, it stays unsaved: its next flush is due.
                    if table.get(entry.public_key) == entry:
                        table.unsaved.discard(entry.public_key)
        if lost:
            try:
                self.merge(self.store.read())
            except DaybookError as exc:
                log.error("cannot read the shared key ring %s: %s", self.store.url, exc)
                return False
        return True

    def change(
        self, choose: Callable[[], tuple[Key, Key | None]], selector: str
    ) -> tuple[Key, Key | None]:
        """Write an operator's change through with check-and-set before it counts.

        `choose` (called under the table's lock) gives the entry before and after (None:
        deleted; the same entry: nothing to do). When another master changed the entry
        meanwhile, the store is read again and the change chosen again on what is there
        now (which may refuse it). Returns the entry before and after.
        """
        for _attempt in range(MAX_CAS_ATTEMPTS):
            with self._table.lock:
                before, after = choose()
                version = self._versions.get(before.public_key, 0)
            if after is before:
                return before, after
            written = self._write_through(before, after, version)
            if written is not None:
                with self._table.lock:
                    self._apply(before, after, written)
                self.save_copy()
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
        if after is None:
            return 0 if self.store.delete(before.public_key, version) else None
        return self.store.write(after, version)

    def _apply(self, before: Key, after: Key | None, version: int) -> None:
        """Make a change the store took in the table (under the lock); `version` is the
        store's new version of the entry."""
        if after is None:
            self._table.remove(before)
            self._versions.pop(before.public_key, None)
            self._table.unsaved.discard(before.public_key)
            return
        self._table.put(after, changed=False)
        self._versions[after.public_key] = version
        self._table.unsaved.discard(after.public_key)

    def save_copy(self) -> None:
        if self._copy is not None:
            self._copy.save_copy(self._table, self.store.url)

    # -- other masters' changes -----------------------------------------------------------------

    def merge(self, snapshot: KeySnapshot) -> int:
        """Take the store's current keys in: another master's accept, reject, delete or
        new pending key. A change of this master's not written yet stands over the
        entry it was made on; over an entry another master changed since, theirs stands.
        Returns how many entries changed here."""
        table = self._table
        with table.lock:
            changed = self._drop_unconfirmed(snapshot)
            self._write_back_if_lost(snapshot)
            for public_key, stored in snapshot.keys.items():
                based_on = self._versions.get(public_key, 0)
                if stored.version < based_on:
                    continue  # an answer from before this master's own write of the key
                if public_key in table.unsaved:
                    if based_on == stored.version:
                        continue
                    table.unsaved.discard(public_key)
                self._versions[public_key] = stored.version
                if table.get(public_key) != stored.key:
                    changed += 1
                    self._take(stored.key)
            gone = [
                public_key
                for public_key, version in self._versions.items()
                if public_key not in snapshot.keys and version <= snapshot.index
            ]
            for public_key in gone:
                # It was in the store and is gone: deleted on another master. (An answer
                # older than this master's write of it predates the key, not its delete.)
                changed += 1
                self._versions.pop(public_key)
                table.unsaved.discard(public_key)
                entry = table.get(public_key)
                if entry is not None:
                    table.remove(entry)
            if not table.unsaved:
                table.clear_dirty()
        if changed:
            self.save_copy()
        return changed

    def _drop_unconfirmed(self, snapshot: KeySnapshot) -> int:
        """On the first answer after starting from this master's copy (under the lock):
        the copy's keys the store does not have were deleted meanwhile."""
        if not self._provisional:
            return 0
        self._provisional = False
        dropped = 0
        for entry in self._table.entries():
            if not (entry.public_key in snapshot.keys or entry.public_key in self._table.unsaved):
                dropped += 1
                self._table.remove(entry)
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
            self.store.url,
            snapshot.index,
            max(known.values()),
            len(known),
        )
        self._table.unsaved.update(k for k in known if self._table.get(k) is not None)
        self._versions = {}
        self._table.clear_dirty()
        self._table.mark_dirty()

    def _take(self, entry: Key) -> None:
        """Put another master's entry in the table (under the lock)."""
        holder = self._table.holder(entry.role, entry.host) if entry.host else None
        if entry.state == ACCEPTED and holder not in (None, entry.public_key):
            log.warning(
                "the shared key ring has two accepted %s keys for %s, %s and %s; delete one",
                entry.role,
                entry.host,
                fingerprint(holder or ""),
                entry.fingerprint,
            )
        self._table.put(entry, changed=False)
