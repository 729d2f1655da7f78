"""The download desk: signs short-lived URLs for the versions a minion is about to install.

A minion holds no store credentials. It asks, over its CURVE control link, for one service's
versions; the desk answers from the master's own listing of the store (size and SHA-256),
and signs a URL for each version the minion names, if that service is one its host's
winning pattern maps. Anything else is refused, logged and counted: a key is only ever
good for its own host's services.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

from daybook.errors import DaybookError
from daybook.model.downloads import Download
from daybook.model.messages import ControlReply, ControlRequest
from daybook.model.names import AssetRef
from daybook.model.patterns import resolve_host
from daybook.store.base import AssetInfo
from master.metrics import MasterMetrics
from master.served import Served

log = logging.getLogger(__name__)

# Signs a GET of one asset, valid for the given seconds: the store's `presign`.
Signer = Callable[[AssetRef, float], str]


class DownloadDesk:
    def __init__(
        self,
        *,
        served: Served,
        signer: Signer | None,
        expiry_s: float,
        metrics: MasterMetrics,
        clock: Callable[[], float],
    ) -> None:
        self._served = served
        self._signer = signer
        self._expiry_s = expiry_s
        self._metrics = metrics
        self._clock = clock

    def answer(self, request: ControlRequest, host: str) -> ControlReply:
        """The service's versions, with a signed URL for each version the request names."""
        assert request.service is not None  # the wire refuses a `downloads` without one
        unready = self._unready()
        if unready is not None:
            return ControlReply(request.request_id, error=unready)
        assert self._served.mappings is not None
        if request.service not in resolve_host(host, self._served.mappings).services:
            refusal = f"{request.service} is not mapped to {host}"
            log.warning("refused download URLs to %s: %s", host, refusal)
            self._metrics.refused_downloads.labels(host).inc()
            return ControlReply(request.request_id, error=refusal)
        listed = self._listed(request.service)
        missing = [v for v in request.versions if v not in listed]
        if missing:
            error = f"the store does not hold {request.service} {', '.join(missing)}"
            return ControlReply(request.request_id, error=error)
        wanted = set(request.versions)
        try:
            downloads = tuple(
                self._download(info, sign=info.version in wanted) for info in listed.values()
            )
        except DaybookError as exc:
            return ControlReply(request.request_id, error=f"cannot sign a download URL: {exc}")
        return ControlReply(request.request_id, downloads=downloads)

    def _unready(self) -> str | None:
        served = self._served
        if served.mappings is None or served.assets is None:
            return "the master has not read the mappings and the store yet; try again"
        if self._signer is None:
            return "this master's store has no download URLs; read the store directly"
        return None

    def _listed(self, service: str) -> Mapping[str, AssetInfo]:
        assets = self._served.assets or {}
        return {ref.version: info for ref, info in assets.items() if ref.service == service}

    def _download(self, info: AssetInfo, *, sign: bool) -> Download:
        url: str | None = None
        expires_at = 0.0
        if sign:
            assert self._signer is not None
            expires_at = self._clock() + self._expiry_s
            url = self._signer(info.ref, self._expiry_s)
        return Download(info.service, info.version, info.size, info.sha256, url, expires_at)
