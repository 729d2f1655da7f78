"""What the master serves now: the watchers' last reads, the state built from them, and the
sync that carries that state."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from daybook.model.mappings import MappingTable
from daybook.model.names import AssetRef
from daybook.model.pins import Pin
from daybook.model.rollout import Rollout
from daybook.model.state import EncodedState
from daybook.model.sync import Sync
from daybook.store.base import AssetInfo


@dataclass
class Served:
    """One per master, on the loop's thread: the desired-state keeper writes it; the
    snapshot, the results recorder and the operator desk read it.

    `mappings` and `digests` are None until the registry and the store have been read once;
    `state` and `sync` until a state has been built from both (or restored).
    """

    mappings: MappingTable | None = None
    # By service, read with the mappings (and so None exactly when they are).
    pins: Mapping[str, Pin] | None = None
    digests: Mapping[str, str] | None = None
    # Per service, each version's archive size in bytes, for the HTTP API and the metrics.
    sizes: Mapping[str, Mapping[str, int]] | None = None
    # Every asset the store lists, with its SHA-256: what signed downloads are checked against.
    assets: Mapping[AssetRef, AssetInfo] | None = None
    state: EncodedState | None = None
    sync: Sync | None = None
    # The rolling syncs the master keeps at hand, oldest first (the rollout driver's).
    rollouts: tuple[Rollout, ...] = ()
