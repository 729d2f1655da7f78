"""The exception hierarchy: library code raises these, only the CLI turns them into exit codes."""

from __future__ import annotations


class DaybookError(Exception):
    """Root of every error Daybook raises on purpose.

    `exit_code` follows the CLI contract: 1 means the operation ran and something failed,
    2 means bad usage or bad input and nothing was changed.
    """

    exit_code = 1


class InputError(DaybookError):
    """A bad name, version, pattern, file or argument supplied by the user."""

    exit_code = 2


class ConfigError(InputError):
    """An unreadable or invalid configuration, or a missing credential."""


class StoreError(DaybookError):
    """The asset store failed or could not be reached."""


class AssetExistsError(StoreError):
    """Pushing a version that the store already holds, without --force."""

    exit_code = 1


class AssetNotFoundError(StoreError):
    """The asset asked for is not in the store."""


class StoreUnavailableError(StoreError):
    """The store could not be reached, failed on its side, or broke off a transfer: a fault
    that may clear by itself, so worth retrying (unlike a missing bucket or bad credentials)."""


class RegistryError(DaybookError):
    """The mappings registry failed or could not be reached."""


class ConflictError(RegistryError):
    """A check-and-set write kept losing to concurrent writers."""


class ExtractError(DaybookError):
    """An archive is unsafe, corrupt or truncated; nothing from it was installed."""


class IntegrityError(ExtractError):
    """An archive's SHA-256 does not match the one the store recorded."""


class InstallDirError(DaybookError):
    """A service's place under the install dir cannot hold versions (a file is there)."""


class LockError(DaybookError):
    """A lock (the install lock, a master's data dir) is held by another process, or
    cannot be made."""


class LockHeldError(LockError):
    """Another live process holds the lock; `holder_pid` is the pid it wrote, if readable."""

    def __init__(self, message: str, *, holder_pid: int | None) -> None:
        super().__init__(message)
        self.holder_pid = holder_pid


class WireError(DaybookError):
    """A network frame is malformed, oversized, of an unknown kind or an unknown version."""


class FleetError(DaybookError):
    """The master could not be reached or refused an operator request."""


class PinError(DaybookError):
    """A pin or a rollback cannot be made as asked (no older version to roll back to)."""
