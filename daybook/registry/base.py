"""The Registry protocol: where host patterns map to services, and `open_registry(url)`."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol
from urllib.parse import urlparse

from daybook.errors import ConfigError
from daybook.model.leadership import Term
from daybook.model.mappings import MappingTable
from daybook.model.pins import Pin

DEFAULT_KEY_PREFIX = "daybook/hosts/"

# Given the services a pattern has now (empty if it is not mapped), return the services it
# should have; an empty result removes the pattern.
ServicesUpdate = Callable[[tuple[str, ...]], tuple[str, ...]]
# Given a service's pin now (None: not pinned), return its pin afterwards; None unpins.
PinUpdate = Callable[[Pin | None], Pin | None]


@dataclass(frozen=True)
class Snapshot:
    """The whole mapping table at one point, with the pins stored beside it and the
    backend's change index."""

    mappings: MappingTable
    # Opaque, increases on change (Consul's X-Consul-Index; a generation for the file).
    index: int
    pins: Mapping[str, Pin] = field(default_factory=dict)


class Registry(Protocol):
    """A mappings registry. Implementations: `ConsulRegistry` and `FileRegistry`."""

    @property
    def url(self) -> str: ...

    def read(self) -> Snapshot:
        """The current table. Invalid patterns and service names are skipped with a warning."""
        ...

    def update(self, pattern: str, change: ServicesUpdate) -> tuple[str, ...]:
        """Apply `change` to one pattern atomically (check-and-set, retried on conflict).

        `pattern` must already be validated. Returns the services the pattern has afterwards.
        """
        ...

    def update_pin(self, service: str, change: Callable[[Pin | None], Pin | None]) -> Pin | None:
        """Apply `change` to one service's pin atomically (check-and-set, retried on
        conflict). `change` gets the pin now (None: not pinned) and returns the pin wanted
        (None removes it). Returns the pin afterwards.

        Pins live beside the mappings (Consul: `daybook/pins/<service>` beside
        `daybook/hosts/`; the file: its `pins` table); `read` and `watch` return them, and
        a pin change wakes `watch` like a mapping change.
        """
        ...

    def watch(self, index: int, timeout_s: float) -> Snapshot:
        """Block until the table's (or the pins') index moves past `index`, or `timeout_s`
        passes.

        Returns the current snapshot either way; callers compare data, not just indexes.
        `index` 0 answers at once.
        """
        ...

    def close(self) -> None: ...


class Leadership(Protocol):
    """The fleet's leader lock, which at most one master holds at a time.

    Implementations: `ConsulLeadership` (a lock key such as `daybook/leader` acquired
    through a Consul session with a TTL that `renew` keeps alive) and `FileLeadership` (a
    lease beside the mappings file that the kernel releases when its holder dies). Each
    acquisition starts a new `Term` whose number is larger than every earlier one.
    """

    def acquire(self, holder: str) -> Term | None:
        """Try once to take the lock for `holder` (this master's address). The new term
        if it was taken, None if another master holds it (or lock-delay still runs)."""
        ...

    def renew(self) -> bool:
        """Keep the held term alive (renew the session). False when it is gone: the
        session was invalidated or destroyed, or the lock is someone else's; the caller
        must step down at once."""
        ...

    def release(self) -> None:
        """Give the lock up now (on SIGTERM), so a standby takes over without waiting."""
        ...

    def leader(self) -> Term | None:
        """Who leads now, as the lock says; None when nobody holds it."""
        ...

    def depose(self, term: Term) -> None:
        """Hasten a takeover from a holder that stopped answering: end `term`'s session
        (Consul) so the lock frees. Safe to call on a term that already ended."""
        ...

    def close(self) -> None: ...


def open_registry(url: str, *, key_prefix: str = DEFAULT_KEY_PREFIX) -> Registry:
    """Open a registry by URL: `consul://HOST:PORT[/KEY_PREFIX]` or `file:///PATH`.

    `consul://` with no host uses CONSUL_HTTP_ADDR (then 127.0.0.1:8500), as Consul's own
    tools do. A key prefix in the URL wins over `key_prefix`.
    """
    parsed = urlparse(url)
    if parsed.scheme in ("consul", "consul+https"):
        from daybook.registry.consul import ConsulRegistry

        return ConsulRegistry.from_url(url, key_prefix=key_prefix)
    if parsed.scheme == "file":
        from daybook.registry.file import FileRegistry

        if parsed.netloc not in ("", "localhost") or not parsed.path:
            raise ConfigError(f"registry URL {url!r} is not file:///ABSOLUTE/PATH")
        return FileRegistry(Path(parsed.path))
    raise ConfigError(
        f"unsupported registry URL {url!r}: expected consul://HOST:PORT[/KEY_PREFIX] or file:///PATH"
    )
