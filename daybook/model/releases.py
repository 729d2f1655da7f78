"""The release lifecycle's decisions on a host: which versions to install, which to remove,
and which one `current` points at. Pure: the file work is in daybook/install/releases.py."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence

# CURRENT_LINK (names.py) is a valid version name too, as a store may hold one pushed
# before it was reserved: with the link kept, no version is installed under it.
from daybook.model.names import CURRENT_LINK, is_valid_version, version_sort_key
from daybook.model.pins import Pin
from daybook.model.rules import checked, record

# Why a version retention would remove stays: a process runs from it or holds a file in it.
IN_USE = "in use"


@record
class ReleasePolicy:
    """How a host keeps one service's versions: the newest `keep_versions` (0 keeps all),
    and whether `current` is maintained."""

    keep_versions: int = checked(minimum=0, default=0)
    activate: bool = False

    @property
    def enabled(self) -> bool:
        """False: the lifecycle leaves the service exactly as plain installs do."""
        return self.keep_versions > 0 or self.activate


@record
class Selection:
    """Which of a service's versions a host installs: the newest `keep` (0: all of them),
    plus `pinned`, even when it is older; with `activate`, never one named like the link.
    Travels to the install child."""

    keep: int = checked(minimum=0, default=0)
    pinned: str | None = checked(is_valid_version, default=None)
    activate: bool = False


@record
class Retention:
    """What retention does with a service's installed versions: `remove` them, in order,
    and why each of the others past the newest N is `kept` ("current", "pinned")."""

    remove: tuple[str, ...] = checked(is_valid_version, default=())
    kept: Mapping[str, str] = checked(key=is_valid_version, default_factory=dict)


def newest_first(versions: Iterable[str]) -> list[str]:
    """The versions newest first, in the order `assets` lists them (reversed)."""
    return sorted(set(versions), key=lambda v: (version_sort_key(v), v), reverse=True)


def pinned_versions(
    pins: Mapping[str, Pin], services: Iterable[str], host: str
) -> dict[str, str | None]:
    """The version each service is pinned to on `host`, None where it runs its newest."""
    return {s: pins[s].version_for(host) if s in pins else None for s in services}


def wanted_versions(
    available: Sequence[str], installed: Collection[str], selection: Selection
) -> list[str]:
    """The store's versions this host should have, oldest first as the store lists them.

    With `keep` N > 0, only the newest N of everything the host could hold (the store's
    and the already installed), so a version is never downloaded only to be removed
    again; plus the pinned version wherever it is in the order.
    """
    if selection.keep == 0:
        chosen = set(available)
    else:
        chosen = set(newest_first([*available, *installed])[: selection.keep])
    if selection.pinned is not None:
        chosen.add(selection.pinned)
    return [version for version in available if version in chosen]


def choose_current(installed: Collection[str], pinned: str | None) -> str | None:
    """The version `current` should point at: the pinned one when it is completely installed,
    else the newest completely installed one, None when there is none."""
    if pinned is not None and pinned in installed:
        return pinned
    newest = newest_first(v for v in installed if v != CURRENT_LINK)
    return newest[0] if newest else None


def plan_retention(
    installed: Collection[str], keep: int, *, current: str | None, pinned: str | None
) -> Retention:
    """The installed versions past the newest `keep` to remove, except the one `current`
    points at and the pinned one (kept). `keep` 0 removes nothing."""
    if keep == 0:
        return Retention()
    older = newest_first(installed)[keep:]
    kept = {version: "pinned" for version in older if version == pinned}
    kept.update({version: CURRENT_LINK for version in older if version == current})
    return Retention(remove=tuple(v for v in older if v not in kept), kept=kept)
