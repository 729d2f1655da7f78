"""Desired state: which services every host pattern maps to, and each service's versions."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import field

from daybook.model.ids import EMPTY_DIGEST, is_valid_digest
from daybook.model.mappings import MappingTable
from daybook.model.names import is_valid_service
from daybook.model.patterns import is_valid_pattern
from daybook.model.pins import Pin
from daybook.model.rules import checked, record


@record
class DesiredState:
    """What every host should have: the mapping table, each service's versions digest,
    and the pins (by service) that say which version `current` points at.

    A service missing from `digests` has no versions in the store (`EMPTY_DIGEST`).
    """

    mappings: MappingTable = checked(is_valid_service, key=is_valid_pattern)
    digests: Mapping[str, str] = checked(is_valid_digest, key=is_valid_service)
    pins: Mapping[str, Pin] = checked(key=is_valid_service, default_factory=dict)

    def digest_for(self, service: str) -> str:
        return self.digests.get(service, EMPTY_DIGEST)


@record
class EncodedState:
    """A desired state as it travels: compressed bytes, named by the digest of those bytes.

    Minions decode a given digest once and reuse the result, so a republished, unchanged
    state costs them one dictionary lookup. `daybook.wire` makes and reads the bytes.
    """

    blob: bytes = field(repr=False)
    digest: str
