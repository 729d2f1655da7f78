"""Installs versions atomically into `<install_dir>/<service>/<version>/`, under a host lock."""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from pathlib import Path

from daybook.backoff import backoff_s
from daybook.errors import DaybookError, InstallDirError, StoreUnavailableError
from daybook.files import unique_suffix
from daybook.install.lock import InstallLock
from daybook.install.os_errors import describe_os_error
from daybook.install.removal import remove_tree
from daybook.model.names import CURRENT_LINK, AssetRef, is_valid_version, sorted_versions
from daybook.model.releases import Selection, wanted_versions
from daybook.model.results import ServiceResult, ServiceResults
from daybook.store.base import AssetInfo, AssetStream, Store

log = logging.getLogger(__name__)

# Staging directories start with a dot, which no version can, so a half-extracted tree is
# never mistaken for an installed version, and a dead process's leftovers are recognisable.
STAGING_PREFIX = ".partial-"
# The release lifecycle's leftovers, also dot names: a version being removed (renamed out of
# the way, then deleted) and a `current` link made but not yet renamed into place. A run
# killed between its steps leaves one of these; the next run under the lock finishes it.
REMOVING_PREFIX = ".removing-"
LINK_TEMP_PREFIX = ".current-"
_LEFTOVER_PREFIXES = (STAGING_PREFIX, REMOVING_PREFIX, LINK_TEMP_PREFIX)

# Which versions of each service to install; a service not named gets all of them.
Selections = Mapping[str, Selection]

# Wraps a store stream, e.g. to draw a progress bar; given the asset and its size.
StreamWrapper = Callable[[AssetRef, AssetStream], AssetStream]
# Waits the given seconds; False if the caller is stopping and should not go on.
Pause = Callable[[float], bool]

# A download the store broke off (or could not start) is tried again this many times in
# all, after a jittered pause doubling from the first delay up to the cap.
DOWNLOAD_ATTEMPTS = 4
RETRY_FIRST_DELAY_S = 0.5
RETRY_MAX_DELAY_S = 8.0


def _sleep(seconds: float) -> bool:
    time.sleep(seconds)
    return True


def retry_delay_s(retry: int, rng: random.Random) -> float:
    """The pause before retry number `retry` (1, 2, ...)."""
    return backoff_s(retry, start_s=RETRY_FIRST_DELAY_S, max_s=RETRY_MAX_DELAY_S, rng=rng)


class Installer:
    """Installs every missing version of a set of services from a store.

    One bad version never stops the others: each failure is recorded with its reason.
    """

    def __init__(
        self,
        store: Store,
        install_dir: Path,
        *,
        max_parallel: int = 2,
        wrap_stream: StreamWrapper | None = None,
        lock_timeout_s: float = 600.0,
        download_attempts: int = DOWNLOAD_ATTEMPTS,
        pause: Pause = _sleep,
    ) -> None:
        self._store = store
        self.install_dir = install_dir
        self._max_parallel = max(1, max_parallel)
        self._wrap_stream = wrap_stream
        self._lock_timeout_s = lock_timeout_s
        self._download_attempts = max(1, download_attempts)
        self._pause = pause
        self._rng = random.Random()

    def installed_versions(self, service: str) -> list[str]:
        """Versions fully installed for `service`; none where its directory cannot be read
        (`sync` fails that service and says why)."""
        try:
            return installed_versions(self.install_dir / service)
        except InstallDirError:
            return []

    def installed(self, services: Sequence[str]) -> dict[str, list[str]]:
        return {service: self.installed_versions(service) for service in services}

    @contextmanager
    def locked(self) -> Iterator[None]:
        with InstallLock(self.install_dir, timeout_s=self._lock_timeout_s):
            self._remove_stale_staging()
            yield

    def sync(
        self,
        services: Sequence[str],
        selections: Selections | None = None,
        *,
        dry_run: bool = False,
    ) -> ServiceResults:
        """List each service's versions in the store and install the missing ones (those
        `selections` chooses, where it names the service: see `wanted_versions`).

        With `dry_run`, `installed` lists what would be installed and nothing is written.
        """
        available: dict[str, list[AssetInfo] | DaybookError] = {}
        for service in services:
            try:
                available[service] = self._wanted_assets(service, (selections or {}).get(service))
            except DaybookError as exc:
                available[service] = exc
        if dry_run:
            return self._plan_only(available)
        with self.locked():
            return self._install_all(available, _refused(available, selections or {}))

    def _wanted_assets(self, service: str, selection: Selection | None) -> list[AssetInfo]:
        """The store's versions of `service` to have on this host. Raises when the store
        cannot list them, or when the service's directory cannot hold versions: a file
        there fails this service, not the whole run."""
        installed = installed_versions(self.install_dir / service)
        assets = self._store.list_assets(service)
        if selection is None:
            return assets
        wanted = set(wanted_versions([a.version for a in assets], installed, selection))
        return [a for a in assets if a.version in wanted]

    def _plan_only(self, available: Mapping[str, list[AssetInfo] | DaybookError]) -> ServiceResults:
        results: dict[str, ServiceResult] = {}
        for service, assets in available.items():
            if isinstance(assets, DaybookError):
                log.warning("cannot install %s: %s", service, assets)
                results[service] = ServiceResult(error=str(assets))
                continue
            present = set(self.installed_versions(service))
            versions = [a.version for a in assets]
            results[service] = ServiceResult(
                installed=tuple(v for v in versions if v not in present),
                present=tuple(v for v in versions if v in present),
            )
        return results

    def _install_all(
        self,
        available: Mapping[str, list[AssetInfo] | DaybookError],
        refused: Mapping[AssetRef, str],
    ) -> ServiceResults:
        missing: list[AssetRef] = []
        present: dict[str, list[str]] = {}
        for service, assets in available.items():
            if isinstance(assets, DaybookError):
                continue
            have = set(self.installed_versions(service))
            present[service] = [a.version for a in assets if a.version in have]
            missing.extend(a.ref for a in assets if a.version not in have)

        failures: dict[AssetRef, str] = dict(refused)
        fetch = [ref for ref in missing if ref not in refused]
        if fetch:
            with ThreadPoolExecutor(self._max_parallel, thread_name_prefix="install") as pool:
                for ref, reason in zip(fetch, pool.map(self._install_one, fetch), strict=True):
                    if reason is not None:
                        failures[ref] = reason

        results: dict[str, ServiceResult] = {}
        for service, assets in available.items():
            if isinstance(assets, DaybookError):
                log.warning("cannot install %s: %s", service, assets)
                results[service] = ServiceResult(error=str(assets))
                continue
            refs = [ref for ref in missing if ref.service == service]
            results[service] = ServiceResult(
                installed=tuple(r.version for r in refs if r not in failures),
                present=tuple(present[service]),
                failed={r.version: failures[r] for r in refs if r in failures},
            )
        return results

    def _install_one(self, ref: AssetRef) -> str | None:
        """Install one version; return None on success or the reason it failed.

        A store fault that may clear by itself is retried with backoff; anything else (a
        bad archive, a full disk) fails at once.
        """
        attempt = 1
        while True:
            try:
                self.install(ref)
            except StoreUnavailableError as exc:
                if attempt >= self._download_attempts:
                    log.warning("failed to install %s after %d attempt(s): %s", ref, attempt, exc)
                    return str(exc)
                delay_s = retry_delay_s(attempt, self._rng)
                log.warning(
                    "downloading %s failed (%s); retrying in %.1f s (attempt %d of %d)",
                    ref,
                    exc,
                    delay_s,
                    attempt + 1,
                    self._download_attempts,
                )
                if not self._pause(delay_s):
                    return str(exc)
                attempt += 1
            except DaybookError as exc:
                log.warning("failed to install %s: %s", ref, exc)
                return str(exc)
            except OSError as exc:
                log.warning("failed to install %s: %s", ref, exc)
                return describe_os_error(exc, self.install_dir)
            else:
                return None

    def install(self, ref: AssetRef) -> None:
        """Extract one version beside its final place, then rename it in: all or nothing.

        The caller holds the install lock.
        """
        from daybook.install.extract import (
            safe_extract,  # the inflate libraries load only when needed
        )

        service_dir = self.install_dir / ref.service
        final = service_dir / ref.version
        if final.is_dir():
            return
        service_dir.mkdir(parents=True, exist_ok=True)
        staging = service_dir / f"{STAGING_PREFIX}{ref.version}-{unique_suffix()}"
        staging.mkdir(mode=0o755)
        try:
            stream = self._store.open(ref)
            try:
                wrapped = self._wrap_stream(ref, stream) if self._wrap_stream else stream
                safe_extract(wrapped, staging, expected_sha256=stream.sha256)
            finally:
                stream.close()
            os.rename(staging, final)
        except BaseException:
            _remove_leftover(staging)
            raise
        log.info("installed %s into %s", ref, final)

    def _remove_stale_staging(self) -> None:
        """Drop staging trees left by a process that died mid-extraction, and finish the
        removals and link switches a killed run left half done (we hold the lock)."""
        try:
            service_dirs = [e for e in os.scandir(self.install_dir) if e.is_dir()]
        except FileNotFoundError:
            return
        for service_dir in service_dirs:
            for entry in os.scandir(service_dir.path):
                if not entry.name.startswith(_LEFTOVER_PREFIXES):
                    continue
                log.info("removing the leftover %s of an interrupted run", entry.path)
                if entry.is_symlink():
                    with suppress(FileNotFoundError):
                        os.unlink(entry.path)
                else:
                    _remove_leftover(Path(entry.path))


def _remove_leftover(path: Path) -> None:
    """Delete a hidden tree no version depends on. One that will not go is logged, not
    raised: it hides no failure (the run reports its own), and the next run tries again."""
    try:
        remove_tree(path)
    except OSError as exc:
        log.warning("could not remove %s: %s", path, exc)


def _refused(
    available: Mapping[str, list[AssetInfo] | DaybookError], selections: Selections
) -> dict[AssetRef, str]:
    """Versions never installed: one named like the `current` link, where it is kept."""
    refused: dict[AssetRef, str] = {}
    for service, assets in available.items():
        selection = selections.get(service)
        if isinstance(assets, DaybookError) or selection is None or not selection.activate:
            continue
        for asset in assets:
            if asset.version == CURRENT_LINK:
                refused[asset.ref] = (
                    f"version {CURRENT_LINK!r} is the name of the link to the version that "
                    "should run (activate is on): push it under another version"
                )
    return refused


def installed_versions(service_dir: Path) -> list[str]:
    """The versions completely installed in `service_dir`: staging and other hidden trees
    never count, nor does the `current` link (a link is never a version).

    Raises InstallDirError when `service_dir` is there but cannot be read as a directory.
    """
    try:
        entries = list(os.scandir(service_dir))
    except FileNotFoundError:
        return []
    except NotADirectoryError as exc:
        raise InstallDirError(
            f"{service_dir} is not a directory: move it away so the service can be installed"
        ) from exc
    except OSError as exc:
        raise InstallDirError(f"cannot read {service_dir}: {exc.strerror or exc}") from exc
    return sorted_versions(
        [e.name for e in entries if is_valid_version(e.name) and e.is_dir(follow_symlinks=False)]
    )
