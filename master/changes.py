"""What the watcher threads hand to the master loop through its mailbox."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from daybook.model.leadership import Term
from daybook.model.mappings import MappingTable
from daybook.model.names import AssetRef
from daybook.model.pins import Pin
from daybook.store.base import AssetInfo


@dataclass(frozen=True)
class MappingsChanged:
    """The registry's mapping table and the pins beside it, as read; sent only when either
    differs from the last read."""

    mappings: MappingTable
    pins: Mapping[str, Pin] = field(default_factory=dict)


@dataclass(frozen=True)
class DigestsChanged:
    """Per service, the digest of the versions the store holds; sent only on change (of the
    digests, or of an asset's size or SHA-256)."""

    digests: Mapping[str, str]
    # Per service, each version's archive size in bytes, for the HTTP API and the metrics.
    # Not part of equality: the digests say whether anything changed.
    sizes: Mapping[str, Mapping[str, int]] = field(default_factory=dict, compare=False)
    # Every asset listed, with its SHA-256, for signed downloads; sent also when only a
    # version's bytes changed (the digests then do not).
    assets: Mapping[AssetRef, AssetInfo] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class Fresh:
    """A watcher asked to refresh has read its source once more (changes came first)."""

    source: str


@dataclass(frozen=True)
class Wake:
    """Nothing to do but look at the stop flag (posted by the signal handler)."""


@dataclass(frozen=True)
class LeadershipGained:
    """The elector took the leader lock: this master leads under `term` from now."""

    term: Term


@dataclass(frozen=True)
class LeadershipLost:
    """This master's term ended (its session is gone, or the backend stayed silent past
    the term's TTL): stop publishing at once. `why` is for logs and operators."""

    term: Term
    why: str


@dataclass(frozen=True)
class LeaderSeen:
    """A standby's elector saw who holds the lock now (None: nobody)."""

    leader: Term | None


Change = (
    MappingsChanged | DigestsChanged | Fresh | Wake | LeadershipGained | LeadershipLost | LeaderSeen
)
