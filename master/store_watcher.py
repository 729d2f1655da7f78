"""The store watcher: a thread that lists the store on an interval and reports what changed."""

from __future__ import annotations

import logging
import random
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import replace

from daybook.errors import DaybookError
from daybook.model.ids import versions_digest
from daybook.model.names import AssetRef
from daybook.store.base import AssetInfo, Store
from master.changes import Change, DigestsChanged, Fresh
from master.pacing import Pacer, backoff_s

log = logging.getLogger(__name__)


def digests_of(assets: Iterable[AssetInfo]) -> dict[str, str]:
    """Per service, the digest of the versions the store lists."""
    versions: defaultdict[str, list[str]] = defaultdict(list)
    for asset in assets:
        versions[asset.service].append(asset.version)
    return {service: versions_digest(found) for service, found in sorted(versions.items())}


def sizes_of(assets: Iterable[AssetInfo]) -> dict[str, dict[str, int]]:
    """Per service, each listed version's size in bytes."""
    sizes: defaultdict[str, dict[str, int]] = defaultdict(dict)
    for asset in assets:
        sizes[asset.service][asset.version] = asset.size
    return dict(sorted(sizes.items()))


Listing = dict[AssetRef, AssetInfo]


class StoreWatcher:
    """Lists the store every `interval_s` and posts `DigestsChanged` when a digest, or an
    asset's size or SHA-256, differs.

    A listing without SHA-256s (S3 keeps them in each object's metadata) is completed with
    one HEAD per asset not seen before, or changed since: signed downloads are checked
    against the master's SHA-256, never one that comes with the download.

    `refresh()` asks for a listing now; `Fresh("store")` follows once it is done.
    """

    SOURCE = "store"

    def __init__(
        self,
        store: Store,
        post: Callable[[Change], None],
        *,
        interval_s: float,
    ) -> None:
        self._store = store
        self._post = post
        self._interval_s = interval_s
        self._pacer = Pacer()
        self._rng = random.Random()
        self.last: dict[str, str] | None = None
        self.listing: Listing = {}
        self.failures = 0

    def refresh(self) -> None:
        self._pacer.refresh()

    def stop(self) -> None:
        self._pacer.stop()

    def run(self) -> None:
        while not self._pacer.stopped:
            refresh = self._pacer.take_refresh()
            try:
                assets = self._with_sha256(self._store.list_assets())
                digests = digests_of(assets)
            except Exception as exc:  # a watcher thread must outlive any backend failure
                self._failed(exc)
                if refresh:  # as fresh as it gets: the last known versions stand
                    self._post(Fresh(self.SOURCE))
                self._pacer.pause(max(self._interval_s, backoff_s(self.failures, self._rng)))
                continue
            if self.failures:
                log.warning("the store %s is readable again", self._store.url)
                self.failures = 0
            listing = {asset.ref: asset for asset in assets}
            if digests != self.last or listing != self.listing:
                self.last, self.listing = digests, listing
                self._post(DigestsChanged(digests, sizes_of(assets), listing))
            if refresh:
                self._post(Fresh(self.SOURCE))
            self._pacer.pause(self._interval_s)

    def _with_sha256(self, assets: list[AssetInfo]) -> list[AssetInfo]:
        """The assets, each with the SHA-256 recorded at push time where the store has one;
        asked for only when an asset is new or its size or time changed."""
        return [self._completed(asset) if asset.sha256 is None else asset for asset in assets]

    def _completed(self, asset: AssetInfo) -> AssetInfo:
        known = self.listing.get(asset.ref)
        if known is not None and replace(known, sha256=None) == asset:
            return known
        head = self._store.stat(asset.ref)
        if head is not None and head.size == asset.size:
            return replace(asset, sha256=head.sha256)
        return asset

    def _failed(self, exc: Exception) -> None:
        self.failures += 1
        if self.failures == 1:
            log.warning(
                "cannot list the store %s: %s; keeping the last known versions and retrying",
                self._store.url,
                exc,
                exc_info=not isinstance(exc, DaybookError | OSError),
            )
        else:
            log.debug("store %s still failing: %s", self._store.url, exc)
