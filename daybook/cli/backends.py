"""The store and the registry the settings name, opened for one command.

Imported on first use, so `--help` and the commands that need neither never load them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from daybook.config import Settings

if TYPE_CHECKING:
    from daybook.registry.base import Registry
    from daybook.store.base import Store


def open_configured_store(settings: Settings) -> Store:
    from daybook.store.base import open_store

    return open_store(settings.store)


def open_configured_registry(settings: Settings) -> Registry:
    from daybook.registry.base import open_registry

    return open_registry(settings.registry, key_prefix=settings.consul_key_prefix)
