"""The Registry protocol: where host patterns map to services, and `open_registry(url)`."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from daybook.errors import ConfigError
from daybook.model.mappings import MappingTable
from daybook.model.pins import Pin
from daybook.urls import file_url_path, split_url

if TYPE_CHECKING:
    from daybook.model.leadership import Term

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
        must step down at once. Also False when no term is held.

        Raises RegistryError when the backend cannot answer (Consul unreachable): the term
        is then neither confirmed nor lost. It lasts at least `ttl_s` after the last renew
        that returned True, and the caller may lead until then, not longer.
        """
        ...

    def release(self) -> None:
        """Give the lock up now (on SIGTERM), so a standby takes over without waiting."""
        ...

    def leader(self) -> Term | None:
        """Who leads now, as the lock says; None when nobody holds it."""
        ...

    def watch(self, index: int, timeout_s: float) -> tuple[int, Term | None]:
        """For a standby: block until the lock changes past `index` (taken, released,
        expired), or `timeout_s` passes; then (the new index, `leader()`). `index` 0
        answers at once. Consul holds a blocking query on the lock key, so a standby at
        rest costs one request per `timeout_s`; the file lease is polled locally.
        Compare terms, not indexes: an index may also move for an unrelated write.

        Block only while someone leads. A lock that is free yet refuses `acquire` is in
        its lock-delay (Consul, after an expiry or a `depose`) and will not change again:
        retry `acquire` every ~0.1 s until it passes (at most the lock-delay)."""
        ...

    @property
    def ttl_s(self) -> float:
        """How long a term outlives its last successful renew, at least (Consul: the
        session TTL; the file lease: forever while the holder's process lives)."""
        ...

    def depose(self, term: Term) -> None:
        """Hasten a takeover from a holder that stopped answering: end `term`'s session
        (Consul) so the lock frees. Safe to call on a term that already ended."""
        ...

    def close(self) -> None: ...


def open_leadership(url: str, *, key_prefix: str = DEFAULT_KEY_PREFIX) -> Leadership:
    """The leader lock that goes with the registry at `url`: for `consul://` a lock key
    beside the key prefix (`daybook/hosts/` -> `daybook/leader`) on the same agent, with
    the same token, TLS and scope; for `file:///PATH` a lease beside the mappings file."""
    scheme = split_url(url, "registry").scheme
    if scheme in ("consul", "consul+https"):
        from daybook.registry.consul_leadership import ConsulLeadership

        return ConsulLeadership.from_url(url, key_prefix=key_prefix)
    if scheme == "file":
        from daybook.registry.lease import FileLeadership

        return FileLeadership(file_url_path(url, "registry"))
    raise ConfigError(
        f"unsupported registry URL {url!r}: expected consul://HOST:PORT[/KEY_PREFIX] or file:///PATH"
    )


def open_registry(url: str, *, key_prefix: str = DEFAULT_KEY_PREFIX) -> Registry:
    """Open a registry by URL: `consul://HOST:PORT[/KEY_PREFIX]` or `file:///PATH`.

    `consul://` with no host uses CONSUL_HTTP_ADDR (then 127.0.0.1:8500), as Consul's own
    tools do. A key prefix in the URL wins over `key_prefix`.
    """
    scheme = split_url(url, "registry").scheme
    if scheme in ("consul", "consul+https"):
        from daybook.registry.consul import ConsulRegistry

        return ConsulRegistry.from_url(url, key_prefix=key_prefix)
    if scheme == "file":
        from daybook.registry.file import FileRegistry

        return FileRegistry(file_url_path(url, "registry"))
    raise ConfigError(
        f"unsupported registry URL {url!r}: expected consul://HOST:PORT[/KEY_PREFIX] or file:///PATH"
    )
