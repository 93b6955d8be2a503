"""Every Prometheus metric Throttle exports, built on a registry the caller passes in.

No module-level metric objects: each process (and each test) builds one `Metrics` on its own
`CollectorRegistry`, so tests never see each other's counts. Queue depth and age are not
counters the hot path updates but a snapshot read at scrape time (`QueueSnapshot`), refreshed
by a background task from Redis, because a scrape must not call Redis itself.

A component adds its metrics as attributes in its own method of `Metrics` (`_dispatcher`, ...).
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector


@dataclass(frozen=True)
class QueueStat:
    """One policy's queue figures at the time of the last refresh."""

    portal_id: int
    policy: str
    depth: int
    in_flight: int
    oldest_age_seconds: float
    # For autoscaling and alerts (the chart's KEDA trigger, PrometheusRule and dashboard):
    releasable: int = 0
    """Executions the policy's rate lets out now: min(depth, what the rate state allows); 0 while
    paused or outside the release window. Dispatchers scale on this, not on depth."""
    limit_per_second: float | None = None
    """The policy's steady rate (limit / period), to plot releases against; None: unknown."""
    expiration_seconds: float | None = None
    """How long an execution may wait before HubSpot expires it; None: unknown."""


@dataclass(eq=False)
class QueueSnapshot(Collector):
    """The latest per-policy queue figures, exported at scrape time."""

    stats: list[QueueStat] = field(default_factory=list)

    def update(self, stats: Iterable[QueueStat]) -> None:
        self.stats = list(stats)

    def collect(self) -> Iterator[Metric]:
        depth = GaugeMetricFamily(
            "throttle_queue_depth",
            "Executions waiting in a policy's queues.",
            labels=["portal", "policy"],
        )
        flight = GaugeMetricFamily(
            "throttle_in_flight",
            "Executions released and not yet acknowledged.",
            labels=["portal", "policy"],
        )
        age = GaugeMetricFamily(
            "throttle_queue_oldest_age_seconds",
            "Age of the oldest execution waiting in a policy's queues.",
            labels=["portal", "policy"],
        )
        releasable = GaugeMetricFamily(
            "throttle_releasable_backlog",
            "Executions a policy's rate lets out now (0 while paused or outside its window).",
            labels=["portal", "policy"],
        )
        limit = GaugeMetricFamily(
            "throttle_policy_limit_per_second",
            "A policy's steady release rate (limit / period).",
            labels=["portal", "policy"],
        )
        expiration = GaugeMetricFamily(
            "throttle_policy_expiration_seconds",
            "How long an execution of a policy may wait before HubSpot expires it.",
            labels=["portal", "policy"],
        )
        for s in self.stats:
            labels = [str(s.portal_id), s.policy]
            depth.add_metric(labels, s.depth)
            flight.add_metric(labels, s.in_flight)
            age.add_metric(labels, s.oldest_age_seconds)
            releasable.add_metric(labels, s.releasable)
            if s.limit_per_second is not None:
                limit.add_metric(labels, s.limit_per_second)
            if s.expiration_seconds is not None:
                expiration.add_metric(labels, s.expiration_seconds)
        yield depth
        yield flight
        yield age
        yield releasable
        yield limit
        yield expiration


ACTION_SECONDS_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


class ActionTally(Collector):
    """The action endpoint's counts and latency histogram, as plain numbers exported at scrape
    time. A prometheus_client child takes a lock on every `inc()`/`observe()`, and the endpoint
    counted three times per request (~1.5 µs of its ~50); the webhook is one event loop, so
    plain integers are safe. The series are the same as those of a Counter and a Histogram."""

    def __init__(self) -> None:
        self.answers: dict[str, int] = {}
        self.signatures: dict[tuple[str, str], int] = {}
        self._bounds = ACTION_SECONDS_BUCKETS
        self._buckets = [0] * (len(self._bounds) + 1)
        self._sum = 0.0

    def answered(self, kind: str) -> None:
        self.answers[kind] = self.answers.get(kind, 0) + 1

    def signed(self, version: str, secret: str) -> None:
        key = (version, secret)
        self.signatures[key] = self.signatures.get(key, 0) + 1

    def observe(self, seconds: float) -> None:
        self._buckets[bisect_left(self._bounds, seconds)] += 1
        self._sum += seconds

    def collect(self) -> Iterator[Metric]:
        answers = CounterMetricFamily(
            "throttle_webhook_answers",
            "Action requests answered, by answer (block, duplicate, continue, fail, "
            "not_installed, no_policy, unavailable; secret_mismatch: 503 because the client secret "
            "looks changed at HubSpot).",
            labels=["answer"],
        )
        for kind, count in self.answers.items():
            answers.add_metric([kind], count)
        signatures = CounterMetricFamily(
            "throttle_webhook_signatures",
            "Valid signatures by version and secret (current, previous: rotation still underway).",
            labels=["version", "secret"],
        )
        for (version, secret), count in self.signatures.items():
            signatures.add_metric([version, secret], count)
        cumulative, total = [], 0
        for bound, count in zip((*self._bounds, float("inf")), self._buckets, strict=True):
            total += count
            cumulative.append(("+Inf" if bound == float("inf") else repr(bound), total))
        seconds = HistogramMetricFamily(
            "throttle_webhook_action_duration_seconds",
            "Time to answer one action request (verify, parse, enqueue), as measured in-process.",
            buckets=cumulative,
            sum_value=self._sum,
        )
        yield answers
        yield signatures
        yield seconds


class ConfigFaultGauge(Collector):
    """`throttle_hubspot_config_fault{kind}`: 1 while HubSpot's token endpoint refuses the app's
    own configuration in a way of that kind, as this process last heard it, else 0 (every kind
    seen since start). The process that reports it says until when (`set`), so one that stops
    asking does not keep the alarm up forever; a success clears it at once."""

    def __init__(self) -> None:
        self._kind: str | None = None
        self._until = 0.0
        self._kinds: set[str] = set()

    def set(self, kind: str, until_monotonic: float) -> None:
        self._kind = kind
        self._until = until_monotonic
        self._kinds.add(kind)

    def clear(self) -> None:
        self._kind = None

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "throttle_hubspot_config_fault",
            "1 while HubSpot's token endpoint refuses the app's own configuration, by kind "
            "(client_credentials, forbidden, bad_request, server_error, unexpected_answer): "
            "portals stay installed and executions wait.",
            labels=["kind"],
        )
        current = self._kind if time.monotonic() < self._until else None
        for kind in sorted(self._kinds):
            family.add_metric([kind], 1.0 if kind == current else 0.0)
        yield family


class Metrics:
    """The metrics of one process; build one per registry.

    Every process gets every component's metrics (a scrape of any pod shows the same names);
    one method per component defines its own, in the order docs/metrics.md lists them."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self._engine(self.registry)
        self._dispatcher(self.registry)
        self._history(self.registry)
        self._hubspot(self.registry)
        self._operator(self.registry)
        self._webhook(self.registry)

    def _engine(self, r: CollectorRegistry) -> None:
        """The queues: their figures read at scrape time, and what was offered to them."""
        self.queues = QueueSnapshot()
        r.register(self.queues)
        self.enqueued = Counter(
            "throttle_enqueued_total",
            "Executions offered to a queue, by result (queued, duplicate, overflow).",
            ["result"],
            registry=r,
        )

    def _dispatcher(self, r: CollectorRegistry) -> None:
        """Releases, completions at HubSpot, settling, the lease reaper."""
        self.released = Counter(
            "throttle_released_total",
            "Executions released from their queue by the rate.",
            ["portal", "policy"],
            registry=r,
        )
        self.acked = Counter(
            "throttle_acked_total",
            "Released executions completed and acknowledged.",
            ["portal", "policy"],
            registry=r,
        )
        self.failed = Counter(
            "throttle_failed_total",
            "Executions recorded as failed, by reason kind (terminal, expired, stopped).",
            ["portal", "policy", "reason"],
            registry=r,
        )
        self.requeued = Counter(
            "throttle_requeued_total",
            "Released executions put back at the head of their queue after a retryable failure.",
            ["portal", "policy"],
            registry=r,
        )
        self.reaped = Counter(
            "throttle_reaped_total",
            "Executions whose lease ran out (a dispatcher died) and went back to their queue.",
            registry=r,
        )
        self.take_seconds = Histogram(
            "throttle_take_duration_seconds",
            "Duration of one take round trip (all shards polled in one loop iteration).",
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0),
            registry=r,
        )
        self.loop_lag = Histogram(
            "throttle_dispatcher_loop_lag_seconds",
            "How late a queue was taken after its due time.",
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
            registry=r,
        )
        self.completion_seconds = Histogram(
            "throttle_completion_duration_seconds",
            "Duration of one completer call: one batch of a portal's released executions.",
            registry=r,
        )

    def _history(self, r: CollectorRegistry) -> None:
        """Execution history on its way to PostgreSQL."""
        self.history_written = Counter(
            "throttle_history_events_written_total",
            "History events committed to PostgreSQL.",
            registry=r,
        )
        self.history_dropped = Counter(
            "throttle_history_events_dropped_total",
            "History events lost because the Redis buffer overflowed while PostgreSQL was behind.",
            registry=r,
        )
        self.history_errors = Counter(
            "throttle_history_write_errors_total",
            "Failed attempts to commit a batch of history to PostgreSQL.",
            registry=r,
        )
        self.history_backlog = Gauge(
            "throttle_history_backlog_events",
            "History events read from Redis and not yet committed to PostgreSQL.",
            registry=r,
        )

    def _hubspot(self, r: CollectorRegistry) -> None:
        """HubSpot's API: calls, each portal's budget, tokens, installs."""
        self.hubspot_requests = Counter(
            "throttle_hubspot_requests_total",
            "Calls to the HubSpot API, by operation and HTTP status (0 = timeout/connection).",
            ["operation", "status"],
            registry=r,
        )
        self.hubspot_rate_limited = Counter(
            "throttle_hubspot_rate_limited_total",
            "429 answers from HubSpot, by portal (each holds the portal for a whole window).",
            ["portal"],
            registry=r,
        )
        self.hubspot_budget_waits = Counter(
            "throttle_hubspot_budget_waits_total",
            "Times a portal's completions waited because its API budget for the window was spent.",
            ["portal"],
            registry=r,
        )
        self.hubspot_callbacks = Counter(
            "throttle_hubspot_callbacks_total",
            "Callbacks sent to HubSpot's completion API, by result "
            "(completed, already_completed, retry, failed).",
            ["result"],
            registry=r,
        )
        self.token_refreshes = Counter(
            "throttle_token_refreshes_total",
            "OAuth access token refreshes, by result (ok, refused: the portal's refresh token is "
            "dead; config_fault: the app's configuration is refused; error).",
            ["result"],
            registry=r,
        )
        self.hubspot_config_fault = ConfigFaultGauge()
        r.register(self.hubspot_config_fault)
        self.hubspot_config_faults = Counter(
            "throttle_hubspot_config_faults_total",
            "Answers of HubSpot's token endpoint refusing the app's own configuration, by kind "
            "(never an uninstall).",
            ["kind"],
            registry=r,
        )
        self.portals_uninstalled = Counter(
            "throttle_portals_uninstalled_total",
            "Portals marked uninstalled, by cause (refresh_refused, uninstall_webhook).",
            ["cause"],
            registry=r,
        )
        self.oauth_installs = Counter(
            "throttle_oauth_installs_total",
            "OAuth install callbacks, by result (installed, bad_state, bad_request, denied, "
            "exchange_failed, store_failed).",
            ["result"],
            registry=r,
        )

    def _operator(self, r: CollectorRegistry) -> None:
        """ThrottlePolicy resources into the engine; which replica acts."""
        self.operator_leader = Gauge(
            "throttle_operator_leader",
            "1 while this operator replica holds the Lease and acts, 0 while it stands by.",
            registry=r,
        )
        self.operator_reconciles = Counter(
            "throttle_operator_reconciles_total",
            "Specs reconciled into the engine, by result (written, unchanged, invalid, conflict, "
            "error).",
            ["result"],
            registry=r,
        )
        self.operator_restores = Counter(
            "throttle_operator_restores_total",
            "Policies whose parameters Redis had lost and the operator wrote back.",
            registry=r,
        )
        self.operator_status_patches = Counter(
            "throttle_operator_status_patches_total",
            "ThrottlePolicy status patches sent (only when something changed).",
            registry=r,
        )

    def _webhook(self, r: CollectorRegistry) -> None:
        """The action endpoint's answers (plain numbers, see `ActionTally`) and refusals."""
        self.webhook_actions = ActionTally()
        r.register(self.webhook_actions)
        self.webhook_rejected = Counter(
            "throttle_webhook_rejected_total",
            "Requests refused before queueing, by endpoint and reason (signature, payload; "
            "inflight, loop_lag: shed under load; too_many_failures: config API guessing).",
            ["endpoint", "reason"],
            registry=r,
        )
