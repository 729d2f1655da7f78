"""What the master serves now: the watchers' last reads, the state built from them, and the
sync that carries that state."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from daybook.model.mappings import MappingTable
from daybook.model.state import EncodedState
from daybook.model.sync import Sync


@dataclass
class Served:
    """One per master, on the loop's thread: the desired-state keeper writes it; the
    snapshot, the results recorder and the operator desk read it.

    `mappings` and `digests` are None until the registry and the store have been read once;
    `state` and `sync` until a state has been built from both (or restored).
    """

    mappings: MappingTable | None = None
    digests: Mapping[str, str] | None = None
    # Per service, each version's archive size in bytes, for the HTTP API and the metrics.
    sizes: Mapping[str, Mapping[str, int]] | None = None
    state: EncodedState | None = None
    sync: Sync | None = None
