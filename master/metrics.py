"""The master's Prometheus metrics.

Every master has a `CollectorRegistry` of its own, never the library's global one, so
several masters in one process (the tests) keep separate counts. The loop thread updates
the counters as things happen, and the gatekeeper's thread its refused handshakes; the HTTP
thread renders the registry. prometheus_client locks each value, and the liveness gauge is
computed at scrape time from a snapshot.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from daybook.model.messages import CONTROL_OPS
from daybook.model.results import Report
from daybook.model.sync import SYNC_ORIGINS
from master.gatekeeper import REFUSAL_REASONS

NAMESPACE = "daybook"
# From a sync's issue to a host's report: a no-op sync answers in milliseconds, a large
# download takes minutes, and a host that was down answers on a republish much later.
REPORT_LATENCY_BUCKETS_S = (
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
    1800.0,
)

HostCounter = Callable[[], tuple[int, int]]


class _LivenessCollector(Collector):
    """`daybook_hosts{state}`, counted when scraped, as liveness moves with the clock."""

    NAME = f"{NAMESPACE}_hosts"
    HELP = "Known minions by state: up while heartbeats keep arriving, down after down_after_s."

    def __init__(self, count: HostCounter) -> None:
        self._count = count

    def describe(self) -> Iterable[GaugeMetricFamily]:
        return [GaugeMetricFamily(self.NAME, self.HELP, labels=["state"])]

    def collect(self) -> Iterable[GaugeMetricFamily]:
        up, down = self._count()
        family = GaugeMetricFamily(self.NAME, self.HELP, labels=["state"])
        family.add_metric(["up"], up)
        family.add_metric(["down"], down)
        return [family]


class MasterMetrics:
    """The counters, gauges and histogram one master exposes at `/metrics`."""

    def __init__(self, host_counter: HostCounter | None = None) -> None:
        self.registry = CollectorRegistry()
        if host_counter is not None:
            self.registry.register(_LivenessCollector(host_counter))

        def counter(name: str, text: str, labels: tuple[str, ...] = ()) -> Counter:
            return Counter(name, text, labels, namespace=NAMESPACE, registry=self.registry)

        self.syncs_started = counter("syncs_started", "Syncs started, by origin.", ("origin",))
        self.syncs_completed = counter(
            "syncs_completed",
            "Syncs that ended, by result: ok or failed (a host failed) when every expected "
            "host answered, incomplete when some had not by the deadline or were down.",
            ("result",),
        )
        self.reports = counter(
            "reports", "Reports received from minions (duplicates excluded).", ("result",)
        )
        self.duplicate_reports = counter(
            "duplicate_reports", "Reports received again and recorded once."
        )
        self.heartbeats = counter("heartbeats", "Heartbeats received from minions.")
        self.install_failures = counter(
            "install_failures",
            "Versions that failed to install, and services that could not be listed, by service.",
            ("service",),
        )
        self.pulled_bytes = counter(
            "pulled_bytes",
            "Bytes of archives minions downloaded and installed (store size of each version a "
            "report says it installed), by service.",
            ("service",),
        )
        self.invalid_frames = counter(
            "invalid_frames",
            "Frames dropped as malformed, oversized or of the wrong kind, by socket.",
            ("socket",),
        )
        self._add_traffic_counters(counter)
        self.last_success = Gauge(
            "host_last_successful_sync_timestamp_seconds",
            "When each host last finished a sync without failure (Unix time).",
            ("host",),
            namespace=NAMESPACE,
            registry=self.registry,
        )
        self.report_latency = Histogram(
            "report_latency_seconds",
            "From a sync's issue to the arrival of a host's report for it.",
            namespace=NAMESPACE,
            registry=self.registry,
            buckets=REPORT_LATENCY_BUCKETS_S,
        )
        self._add_leadership_metrics(counter)
        self._add_security_counters(counter)
        # Running totals of the loop's own counters, to turn them into increments.
        self._seen_totals: dict[str, float] = {}
        self._export_known_labels()

    def _add_traffic_counters(self, counter: Callable[..., Counter]) -> None:
        """What the master sent and was asked, how often its loop woke for it, and which
        of the loop's periodic tasks failed."""
        self.published_events = counter("published_events", "Sync events published.")
        self.published_bytes = counter("published_bytes", "Bytes of sync events published.")
        self.operator_requests = counter("operator_requests", "Operator requests received.")
        self.loop_wakeups = counter(
            "loop_wakeups",
            "Times the master's loop woke: for a message, a request, a change or a timer. An "
            "idle master wakes only for its periodic tasks.",
        )
        self.task_failures = counter(
            "task_failures",
            "Runs of the master loop's periodic tasks that raised, by task (each is logged "
            "with its traceback and tried again after a backoff).",
            ("task",),
        )

    def _add_leadership_metrics(self, counter: Callable[..., Counter]) -> None:
        """Whether this master leads (a master alone always does), and how often that
        changed; and the heartbeat pace its events ask for when it does."""
        self.leader = Gauge(
            "leader",
            "1 while this master leads its fleet, 0 while it stands by.",
            namespace=NAMESPACE,
            registry=self.registry,
        )
        self.leader.set(1)
        self.heartbeat_interval = Gauge(
            "heartbeat_interval_seconds",
            "The heartbeat interval the master's events ask of its fleet, sized to it.",
            namespace=NAMESPACE,
            registry=self.registry,
        )
        self.leadership_changes = counter(
            "leadership_changes", "Times this master took or lost the leadership."
        )

    def _add_security_counters(self, counter: Callable[..., Counter]) -> None:
        """What the security checks turn away, each counted where it is checked."""
        self.impostor_frames = counter(
            "impostor_frames",
            "Reports and heartbeats dropped because the key that sent them is not bound to "
            "the host they name.",
        )
        self.refused_operator_requests = counter(
            "refused_operator_requests",
            "Control requests refused for who sent them (the local socket, a key and its "
            "standing), by operation.",
            ("op",),
        )
        self.refused_downloads = counter(
            "refused_downloads",
            "Signed download URLs refused to a minion, for a service its host is not mapped "
            "to, by the host asking.",
            ("host",),
        )
        self.refused_handshakes = counter(
            "refused_handshakes",
            "CURVE and local-socket handshakes the gatekeeper refused or held off, by reason.",
            ("reason",),
        )

    def _export_known_labels(self) -> None:
        # Every known label value is exported from the start, so a rate() over a counter
        # sees its first increment rather than a series appearing out of nowhere.
        for origin in sorted(SYNC_ORIGINS):
            self.syncs_started.labels(origin)
        for result in ("ok", "failed"):
            self.syncs_completed.labels(result)
            self.reports.labels(result)
        self.syncs_completed.labels("incomplete")
        for socket in ("results", "control"):
            self.invalid_frames.labels(socket)
        for op in sorted(CONTROL_OPS):
            self.refused_operator_requests.labels(op)
        for reason in REFUSAL_REASONS:
            self.refused_handshakes.labels(reason)

    # -- events from the loop -------------------------------------------------------------------

    def sync_started(self, origin: str) -> None:
        self.syncs_started.labels(origin).inc()

    def sync_completed(self, ok: bool) -> None:
        self.syncs_completed.labels("ok" if ok else "failed").inc()

    def sync_incomplete(self) -> None:
        self.syncs_completed.labels("incomplete").inc()

    def report_received(
        self,
        report: Report,
        *,
        latency_s: float | None,
        sizes: Mapping[str, Mapping[str, int]],
    ) -> None:
        self.reports.labels("ok" if report.ok else "failed").inc()
        if report.ok:
            self.last_success.labels(report.host).set(report.finished_at)
        if latency_s is not None:
            self.report_latency.observe(max(0.0, latency_s))
        for service, result in report.services.items():
            failures = len(result.failed) + (result.error is not None)
            if failures:
                self.install_failures.labels(service).inc(failures)
            known = sizes.get(service, {})
            pulled = sum(known.get(version, 0) for version in result.installed)
            if pulled:
                self.pulled_bytes.labels(service).inc(pulled)

    def leading(self, leads: bool, *, changed: bool = True) -> None:
        self.leader.set(1 if leads else 0)
        if changed:
            self.leadership_changes.inc()

    def task_failed(self, task: str) -> None:
        self.task_failures.labels(task).inc()

    def handshake_refused(self, reason: str) -> None:
        """On the gatekeeper's thread: prometheus_client's counters take their own lock."""
        self.refused_handshakes.labels(reason).inc()

    def host_succeeded_before(self, host: str, finished_at: float) -> None:
        """A success recorded before this master started (from the results database)."""
        self.last_success.labels(host).set(finished_at)

    def add_total(self, metric: Counter, key: str, total: float) -> None:
        """Advance `metric` to a running total the loop keeps elsewhere (a socket wrapper's
        count), by the increment since the last call with the same `key`."""
        increment = total - self._seen_totals.get(key, 0.0)
        if increment > 0:
            metric.inc(increment)
        self._seen_totals[key] = total

    # -- rendering, on the HTTP thread ----------------------------------------------------------

    def render(self, accept: str | None) -> tuple[bytes, str]:
        """The exposition in the format the scraper asked for, and its content type."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type
