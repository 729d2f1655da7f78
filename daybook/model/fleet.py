"""The fleet as the master sees it: each known host's liveness and latest report."""

from __future__ import annotations

from collections.abc import Mapping

from daybook.model.ids import is_valid_id
from daybook.model.leadership import MasterView
from daybook.model.patterns import is_valid_host
from daybook.model.results import Report
from daybook.model.rollout import Rollout
from daybook.model.rules import checked, record
from daybook.model.sync import Sync


@record
class HostStatus:
    """One known host: liveness from heartbeats (as judged when the status was taken), the
    minion process it last heard from, and its most recent report."""

    host: str = checked(is_valid_host)
    up: bool
    last_seen: float
    boot_id: str | None = checked(is_valid_id, default=None)
    started_at: float | None = None
    last_report: Report | None = None


@record
class FleetStatus:
    """Every host the master knows, at the master's clock `now`, the syncs it holds (how
    each stands, without every host's answer) and its recent rolling syncs."""

    epoch: int
    now: float
    hosts: Mapping[str, HostStatus] = checked(key=is_valid_host)
    syncs: tuple[Sync, ...] = ()
    rollouts: tuple[Rollout, ...] = ()
    # The masters the answering master knows: itself (leader or standby) and the leader.
    masters: tuple[MasterView, ...] = ()
