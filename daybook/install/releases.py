"""The release lifecycle's file work on a host: the `current` link, retention, and the hook.

Every step is atomic from the outside and a kill between any two leaves nothing that the
next run does not finish (the installer's lock removes the leftovers, see installer.py):
- the link: a new symlink under a hidden name, renamed over `current`; `current` always
  resolves to a completely installed version, or is absent;
- a removal: the version dir renamed to a hidden name, then deleted.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

from daybook.errors import InstallDirError, WireError
from daybook.files import unique_suffix
from daybook.install.hooks import HookRun, HookRunner, output_tail
from daybook.install.installer import (
    LINK_TEMP_PREFIX,
    REMOVING_PREFIX,
    Installer,
    Selections,
    installed_versions,
)
from daybook.install.os_errors import describe_os_error
from daybook.install.removal import remove_tree
from daybook.install.usage import paths_in_use
from daybook.model.names import CURRENT_LINK
from daybook.model.releases import (
    IN_USE,
    ReleasePolicy,
    Selection,
    choose_current,
    plan_retention,
)
from daybook.model.results import HookResult, ServiceResult, ServiceResults

log = logging.getLogger(__name__)

# A version whose hook failed when `current` moved to it is marked so, with the hook's
# result: each later run reports that failure (the service stays failed, in every sync's
# report, not only the one that happened to move the link) until `current` moves to another
# version or the operator deletes the mark; with the revert on, `current` never moves to a
# marked version again.
HOOK_FAILED_PREFIX = ".hook-failed-"

# Called at each step of a link switch or removal: tests crash the run there.
Checkpoint = Callable[[str], None]


def _no_checkpoint(_step: str) -> None:
    pass


@dataclass(frozen=True)
class Settled:
    """The results with the lifecycle's work added, and the services where it changed
    something on disk (or failed): worth reporting even when nothing was installed."""

    results: ServiceResults
    changed: frozenset[str]


class ReleaseKeeper:
    """Keeps each service's versions on a host as its policy says: the `current` link, the
    hook after it moves, and retention. `settle_all` takes the install lock; `settle` is
    for a caller that holds it."""

    def __init__(
        self,
        install_dir: Path,
        policy_for: Callable[[str], ReleasePolicy],
        hooks: HookRunner,
        *,
        revert_on_hook_failure: bool = False,
        in_use: Callable[[Sequence[Path]], set[Path]] = paths_in_use,
        checkpoint: Checkpoint = _no_checkpoint,
    ) -> None:
        self.install_dir = install_dir
        self.policy_for = policy_for
        self._hooks = hooks
        self._revert = revert_on_hook_failure
        self._in_use = in_use
        self._checkpoint = checkpoint

    def enabled(self, services: Sequence[str]) -> bool:
        return any(self.policy_for(service).enabled for service in services)

    def selections(self, services: Sequence[str], pinned: Mapping[str, str | None]) -> Selections:
        """What the installer fetches for the services the lifecycle keeps."""
        selections: dict[str, Selection] = {}
        for service in services:
            policy = self.policy_for(service)
            if policy.enabled:
                selections[service] = Selection(
                    keep=policy.keep_versions,
                    pinned=pinned.get(service),
                    activate=policy.activate,
                )
        return selections

    def settle_all(
        self, installer: Installer, results: ServiceResults, pinned: Mapping[str, str | None]
    ) -> Settled:
        """Each service's result with what its lifecycle step did, under the install lock."""
        services = [s for s in results if self.policy_for(s).enabled]
        if not services:
            return Settled(results, frozenset())
        settled = dict(results)
        changed: set[str] = set()
        with installer.locked():
            for service in services:
                before = read_current(self.install_dir / service)
                result = self.settle(service, results[service], pinned.get(service))
                settled[service] = result
                if result != results[service] and (
                    result.removed
                    or result.hook is not None
                    or result.current != before
                    or not result.ok
                ):
                    changed.add(service)
        return Settled(settled, frozenset(changed))

    def settle(self, service: str, result: ServiceResult, pinned: str | None) -> ServiceResult:
        """Move `current`, run the hook, and remove old versions, for one service."""
        if result.error is not None:
            return result  # its versions could not be listed: change nothing
        policy = self.policy_for(service)
        service_dir = self.install_dir / service
        try:
            if policy.activate:
                result = self._activate(service_dir, result, pinned)
                if result.error is not None:
                    return result  # not knowing what should run, retention could remove it
            current = read_current(service_dir)
            if policy.keep_versions:
                result = self._retain(service_dir, result, policy, current, pinned)
        except (OSError, InstallDirError) as exc:
            reason = (
                str(exc)
                if isinstance(exc, InstallDirError)
                else describe_os_error(exc, self.install_dir)
            )
            log.warning("keeping the versions of %s failed: %s", service, reason)
            return dataclasses.replace(result, error=f"release lifecycle: {reason}")
        return result

    def _activate(
        self, service_dir: Path, result: ServiceResult, pinned: str | None
    ) -> ServiceResult:
        link = service_dir / CURRENT_LINK
        if link.is_dir() and not link.is_symlink():
            # Installed before activate was on: the link cannot take its place.
            reason = (
                f"a version named {CURRENT_LINK!r} is installed at {link}, where the link to "
                "the version that should run belongs: remove it"
            )
            log.warning("%s: %s", service_dir.name, reason)
            return dataclasses.replace(result, error=f"release lifecycle: {reason}")
        installed = installed_versions(service_dir)
        failures = hook_failures(service_dir)
        wanted = choose_current(installed, pinned)
        # With the revert on, `current` never moves to a version whose hook failed again:
        # it would fail and move back on every sync.
        candidates = [v for v in installed if v not in failures] if self._revert else installed
        target = choose_current(candidates, pinned)
        before = read_current(service_dir)
        if target is None or target == before:
            # The version that should run had its hook fail: the service stays failed.
            earlier = failures.get(wanted) if wanted is not None else None
            return dataclasses.replace(result, current=before, hook=earlier)
        switch_current(service_dir, target, self._checkpoint)
        log.info("%s: current -> %s (was %s)", service_dir.name, target, before)
        hook = self._run_hook(service_dir, target, before)
        if hook is None or hook.ok:
            return dataclasses.replace(result, current=target, previous=before, hook=hook)
        if not self._revert or before is None or before not in installed:
            log.warning("%s: hook failed for %s (exit %s)", service_dir.name, target, hook.exit)
            mark_hook_failure(service_dir, target, hook)
            return dataclasses.replace(result, current=target, previous=before, hook=hook)
        return self._revert_to(service_dir, result, target, before, hook)

    def _revert_to(
        self,
        service_dir: Path,
        result: ServiceResult,
        failed: str,
        before: str,
        hook: HookResult,
    ) -> ServiceResult:
        """Move `current` back after `failed`'s hook failed, and run the hook for `before`."""
        switch_current(service_dir, before, self._checkpoint)
        log.warning("%s: hook failed for %s; current back to %s", service_dir.name, failed, before)
        again = self._run_hook(service_dir, before, failed)
        outcome = "no hook" if again is None else f"exit {again.exit}"
        note = (
            f"\n[daybook: the hook failed for {failed}; current moved back to {before} and the "
            f"hook ran again for it: {outcome}]\n"
        )
        tail = "" if again is None else again.output
        combined = HookResult(
            ok=False,
            exit=hook.exit,
            output=output_tail((hook.output + note + tail).encode("utf-8", errors="replace")),
        )
        mark_hook_failure(service_dir, failed, combined)
        return dataclasses.replace(result, current=before, previous=None, hook=combined)

    def _run_hook(self, service_dir: Path, version: str, previous: str | None) -> HookResult | None:
        return self._hooks.run(
            HookRun(
                service=service_dir.name,
                version=version,
                previous=previous,
                install_path=(service_dir / version).absolute(),
                current_link=(service_dir / CURRENT_LINK).absolute(),
            )
        )

    def _retain(
        self,
        service_dir: Path,
        result: ServiceResult,
        policy: ReleasePolicy,
        current: str | None,
        pinned: str | None,
    ) -> ServiceResult:
        plan = plan_retention(
            installed_versions(service_dir), policy.keep_versions, current=current, pinned=pinned
        )
        kept = dict(plan.kept)
        if plan.remove:
            # Only now: reading every process's open files costs, and is rarely needed.
            busy = self._in_use([service_dir / v for v in plan.remove])
            kept.update({path.name: IN_USE for path in busy})
        removed: list[str] = []
        # One version that will not go does not keep the others, nor hide their removal.
        failures: list[str] = []
        for version in plan.remove:
            if version in kept:
                continue
            try:
                remove_version(service_dir, version, self._checkpoint)
            except OSError as exc:
                where = exc.filename or service_dir / version
                failures.append(f"version {version}: {exc.strerror or exc} ({where})")
                continue
            removed.append(version)
        if removed or kept:
            log.info("%s: removed %s, kept %s", service_dir.name, removed, kept)
        result = dataclasses.replace(result, removed=tuple(removed), kept=kept)
        if not failures:
            return result
        reason = f"could not remove {'; '.join(failures)}"
        log.warning("%s: %s", service_dir.name, reason)
        return dataclasses.replace(result, error=f"release lifecycle: {reason}")


def read_current(service_dir: Path) -> str | None:
    """The version the `current` link names, None without a link (or one to elsewhere)."""
    try:
        target = os.readlink(service_dir / CURRENT_LINK)
    except OSError:
        return None
    return target if "/" not in target and (service_dir / target).is_dir() else None


def hook_failures(service_dir: Path) -> dict[str, HookResult]:
    """The versions whose hook failed when `current` moved to them, with how it failed."""
    try:
        names = os.listdir(service_dir)
    except FileNotFoundError:
        return {}
    failures: dict[str, HookResult] = {}
    for name in names:
        if name.startswith(HOOK_FAILED_PREFIX):
            version = name[len(HOOK_FAILED_PREFIX) :]
            failures[version] = _read_failure(service_dir / name, version)
    return failures


def _read_failure(path: Path, version: str) -> HookResult:
    from daybook import wire  # see mark_hook_failure

    try:
        earlier = wire.from_json(HookResult, path.read_bytes())
    except (OSError, WireError):  # a mark cut short by a crash still says it failed
        earlier = HookResult(ok=False)
    note = (
        f"[daybook: the hook failed when current moved to {version}; the service stays failed "
        f"until current moves on or {path} is deleted]\n"
    )
    output = output_tail((note + earlier.output).encode("utf-8", errors="replace"))
    return HookResult(ok=False, exit=earlier.exit, output=output)


def mark_hook_failure(service_dir: Path, version: str, hook: HookResult) -> None:
    # The wire codecs (msgspec and every message type, 14 ms) load only where a hook failed,
    # not with every `daybook pull`.
    from daybook import wire

    (service_dir / f"{HOOK_FAILED_PREFIX}{version}").write_bytes(wire.to_json(hook))


def switch_current(
    service_dir: Path, version: str, checkpoint: Checkpoint = _no_checkpoint
) -> None:
    """Point `current` at `version` atomically: a new link, renamed over the old one. The
    target is relative, so the service dir can move (or be seen through a bind mount)."""
    temp = service_dir / f"{LINK_TEMP_PREFIX}{unique_suffix()}"
    os.symlink(version, temp)
    checkpoint("link-made")
    try:
        os.replace(temp, service_dir / CURRENT_LINK)
    except OSError:
        # A failed switch leaves `current` as it was, and nothing else behind.
        with suppress(FileNotFoundError):
            os.unlink(temp)
        raise
    checkpoint("link-moved")


def remove_version(
    service_dir: Path, version: str, checkpoint: Checkpoint = _no_checkpoint
) -> None:
    """Take `version` out of sight at once (a rename), then delete it."""
    hidden = service_dir / f"{REMOVING_PREFIX}{version}-{unique_suffix()}"
    os.rename(service_dir / version, hidden)
    checkpoint("hidden")
    remove_tree(hidden)
    checkpoint("deleted")
    with suppress(FileNotFoundError):
        os.unlink(service_dir / f"{HOOK_FAILED_PREFIX}{version}")
