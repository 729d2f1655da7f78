"""Decoded desired states, kept by digest so a republished state is decoded only once.

One cache may serve many minions sharing a process: the first to need a state
decodes and ranks it, the others find it ready.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from daybook import wire
from daybook.model.patterns import PatternTable
from daybook.model.state import DesiredState, EncodedState


class DesiredStateCache:
    def __init__(self, max_entries: int = 4) -> None:
        self._max_entries = max_entries
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, tuple[DesiredState, PatternTable]] = OrderedDict()

    def get(self, state: EncodedState) -> tuple[DesiredState, PatternTable]:
        """The decoded state and its ranked pattern table; WireError if it is malformed."""
        with self._lock:
            entry = self._entries.get(state.digest)
            if entry is None:
                desired = wire.decode_state(state)
                entry = (desired, PatternTable(desired.mappings))
                self._entries[state.digest] = entry
                while len(self._entries) > self._max_entries:
                    self._entries.popitem(last=False)
            else:
                self._entries.move_to_end(state.digest)
            return entry
