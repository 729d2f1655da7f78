"""Store retention: which versions of a service `assets prune` deletes and which it keeps."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from daybook.errors import InputError
from daybook.model.names import is_valid_service, is_valid_version, sorted_versions
from daybook.model.pins import Pin
from daybook.model.rules import checked, record

# Why a version beyond the newest N stays in the store.
KEPT_NEWEST = "newest"
KEPT_PINNED = "pinned"
KEPT_PREVIOUS_PIN = "previous of a pin"
KEPT_CURRENT = "current on a host"


@record
class KeptVersion:
    """One version a prune leaves in the store, and why (`KEPT_*`)."""

    version: str = checked(is_valid_version)
    why: str


@record
class PrunePlan:
    """For one service: the versions to delete (oldest first) and those kept."""

    service: str = checked(is_valid_service)
    removed: tuple[str, ...] = checked(is_valid_version)
    kept: tuple[KeptVersion, ...]


def check_keep(keep: int) -> int:
    if keep < 1:
        raise InputError(f"--keep must be at least 1 (got {keep}): a prune never empties a service")
    return keep


def protected_versions(pin: Pin | None, current_on_hosts: Iterable[str]) -> dict[str, str]:
    """The versions of one service a prune must never delete, each with why: the one its
    pin names, the pin's previous one, and every version some host's `current` points at."""
    protected = {version: KEPT_CURRENT for version in current_on_hosts}
    if pin is not None:
        if pin.previous is not None:
            protected[pin.previous] = KEPT_PREVIOUS_PIN
        protected[pin.version] = KEPT_PINNED
    return protected


def plan_prune(
    service: str, versions: Iterable[str], keep: int, protected: Mapping[str, str]
) -> PrunePlan:
    """Keep the newest `keep` versions and every protected one; delete the rest."""
    check_keep(keep)
    ordered = sorted_versions(set(versions))
    newest = set(ordered[-keep:])
    removed: list[str] = []
    kept: list[KeptVersion] = []
    for version in ordered:
        if version in newest:
            kept.append(KeptVersion(version, KEPT_NEWEST))
        elif version in protected:
            kept.append(KeptVersion(version, protected[version]))
        else:
            removed.append(version)
    return PrunePlan(service, tuple(removed), tuple(kept))
