"""Prometheus metrics from buttress events.

:func:`enable_prometheus` installs an event hook that keeps these metrics (names under the
``namespace``, ``buttress`` by default), labelled by the policy's configured name — never by
per-call data such as keys or tenants, so cardinality stays bounded:

* ``circuit_breaker_state{name}``: 0 closed, 1 open, 2 half-open
* ``circuit_breaker_calls_total{name,status}``: success, failure, ignored, rejected
* ``circuit_breaker_state_transitions_total{name,from_state,to_state}``
* ``circuit_breaker_call_duration_seconds{name}``: histogram
* ``circuit_breaker_failure_rate{name}``: read from the breakers when scraped
* ``retry_attempts_total{name}`` (retries scheduled), ``retry_exhausted_total{name,reason}``
* ``timeouts_total{name}``, ``fallbacks_total{name,strategy}``
* ``rejections_total{policy,name,reason}``
* ``protocol_steps_total{name,resource,strategy,target,outcome}``: fallback protocol steps
* ``degradation_tier{name}``: the current tier (1-4) of each degradation manager
* ``degradation_tier_changes_total{name,from_tier,to_tier}``
* ``service_health{name,service}``: 1 healthy, 0 unhealthy, read from the managers when scraped
* ``resource_status{name,type,resource}``: 0 healthy, 1 degraded, 2 critical, 3 unavailable
* ``resource_usage_percent{name,type,resource}``: usage at the last check
* ``resource_exhaustion_seconds{name,type,resource}``: predicted time until usage reaches 100%
* ``resource_check_latency_seconds{name,type,resource}``: how long the last check took
* ``component_error_rate{name,component}``: error rate over each component's window

Per-call metrics (calls, durations) cost an event per call while the hook is installed; without
it buttress builds no per-call events at all.

The gauges read when scraped (failure rates, tiers, service health, resources, components) come
from the values the policies and monitors publish through :func:`buttress.events.add_reading`
(kinds ``circuit_failure_rate``, ``degradation_tier``, ``service_health``, ``resource_status``,
``resource_usage``, ``resource_exhaustion_seconds``, ``resource_check_latency_seconds`` and
``component_error_rate``): instrumentation sits below them in the layering and never imports
them. Resource metrics are labelled by the manager's name (a team), the resource type and the
resource's registered name, never by anything per check.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from typing import Any

from .. import events as _events

__all__ = ["PrometheusMetrics", "enable_prometheus"]

_ENABLED: dict[tuple[int, str], PrometheusMetrics] = {}
_log = logging.getLogger("buttress.prometheus")
_LOCK = threading.Lock()


def _client() -> Any:
    try:
        import prometheus_client
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "Prometheus metrics need prometheus-client: pip install 'buttress[prometheus]'"
        ) from exc
    return prometheus_client


class PrometheusMetrics:
    """The metrics and the hook that feeds them; made by :func:`enable_prometheus`."""

    def __init__(self, registry: Any, namespace: str) -> None:
        prom = _client()
        self.registry = registry
        self.namespace = namespace
        ns = namespace
        r = registry
        self.breaker_state = prom.Gauge(
            "circuit_breaker_state",
            "Circuit breaker state (0=closed, 1=open, 2=half_open)",
            ["name"],
            namespace=ns,
            registry=r,
        )
        self.breaker_calls = prom.Counter(
            "circuit_breaker_calls_total",
            "Calls through a circuit breaker by status",
            ["name", "status"],
            namespace=ns,
            registry=r,
        )
        self.breaker_transitions = prom.Counter(
            "circuit_breaker_state_transitions_total",
            "Circuit breaker state transitions",
            ["name", "from_state", "to_state"],
            namespace=ns,
            registry=r,
        )
        self.breaker_duration = prom.Histogram(
            "circuit_breaker_call_duration_seconds",
            "Duration of calls through a circuit breaker",
            ["name"],
            namespace=ns,
            registry=r,
        )
        self.retry_attempts = prom.Counter(
            "retry_attempts_total", "Retries scheduled", ["name"], namespace=ns, registry=r
        )
        self.retry_exhausted = prom.Counter(
            "retry_exhausted_total",
            "Retry policies that gave up, by reason",
            ["name", "reason"],
            namespace=ns,
            registry=r,
        )
        self.timeouts = prom.Counter(
            "timeouts_total", "Calls that ran out of time", ["name"], namespace=ns, registry=r
        )
        self.fallbacks = prom.Counter(
            "fallbacks_total",
            "Fallbacks used, by strategy",
            ["name", "strategy"],
            namespace=ns,
            registry=r,
        )
        self.rejections = prom.Counter(
            "rejections_total",
            "Calls refused before running",
            ["policy", "name", "reason"],
            namespace=ns,
            registry=r,
        )
        self.tier_changes = prom.Counter(
            "degradation_tier_changes_total",
            "Degradation tier changes",
            ["name", "from_tier", "to_tier"],
            namespace=ns,
            registry=r,
        )
        self.protocol_steps = prom.Counter(
            "protocol_steps_total",
            "Fallback protocol steps taken, by resource type, strategy, target and outcome",
            ["name", "resource", "strategy", "target", "outcome"],
            namespace=ns,
            registry=r,
        )
        registry.register(_ReadingsCollector(ns))

    def hook(self, event: _events.Event) -> None:
        """The event hook (installed by :func:`enable_prometheus`)."""
        name = event.name
        if isinstance(event, _events.CallCompleted):
            if event.policy == "circuit":
                self.breaker_calls.labels(name, event.outcome).inc()
                self.breaker_duration.labels(name).observe(event.duration)
        elif isinstance(event, _events.CircuitStateChanged):
            old, new = (
                getattr(event.old, "value", event.old),
                getattr(event.new, "value", event.new),
            )
            self.breaker_transitions.labels(name, str(old), str(new)).inc()
            self.breaker_state.labels(name).set(getattr(event.new, "code", 0))
        elif isinstance(event, _events.CallRejected):
            self.rejections.labels(event.policy, name, event.reason).inc()
            if event.policy == "circuit":
                self.breaker_calls.labels(name, "rejected").inc()
        elif isinstance(event, _events.RetryScheduled):
            self.retry_attempts.labels(name).inc()
        elif isinstance(event, _events.GaveUp):
            self.retry_exhausted.labels(name, event.reason).inc()
        elif isinstance(event, _events.TimedOut):
            self.timeouts.labels(name).inc()
        elif isinstance(event, _events.FallbackUsed):
            self.fallbacks.labels(name, event.strategy).inc()
        elif isinstance(event, _events.ProtocolStep):
            self.protocol_steps.labels(
                name, event.resource, event.strategy, event.target or "", event.outcome
            ).inc()
        elif isinstance(event, _events.TierChanged):
            old = getattr(event.old, "value", event.old)
            new = getattr(event.new, "value", event.new)
            self.tier_changes.labels(name, str(old), str(new)).inc()

    def disable(self) -> None:
        """Stop updating the metrics (they stay registered)."""
        _events.remove_hook(self.hook)
        with _LOCK:
            for key, value in list(_ENABLED.items()):
                if value is self:
                    del _ENABLED[key]


class _ReadingsCollector:
    """Gauges read at scrape time from what the policies publish (:func:`buttress.events.readings`).

    Instrumentation sits below the policies: it never imports them, so a breaker's failure rate or
    a service's health reaches it only through the readings the policies publish.
    """

    def __init__(self, namespace: str) -> None:
        self.gauges = (
            (
                f"{namespace}_circuit_breaker_failure_rate",
                "Current failure rate of each circuit breaker",
                ("name",),
                "circuit_failure_rate",
            ),
            (
                f"{namespace}_degradation_tier",
                "Current degradation tier (1 full, 2 core, 3 read-only, 4 maintenance)",
                ("name",),
                "degradation_tier",
            ),
            (
                f"{namespace}_service_health",
                "Last reported health of each service (1 healthy, 0 unhealthy)",
                ("name", "service"),
                "service_health",
            ),
            (
                f"{namespace}_resource_status",
                "Status of each watched resource "
                "(0 healthy, 1 degraded, 2 critical, 3 unavailable)",
                ("name", "type", "resource"),
                "resource_status",
            ),
            (
                f"{namespace}_resource_usage_percent",
                "Usage of each watched resource at its last check (percent)",
                ("name", "type", "resource"),
                "resource_usage",
            ),
            (
                f"{namespace}_resource_exhaustion_seconds",
                "Predicted seconds until a watched resource reaches 100% at its current trend",
                ("name", "type", "resource"),
                "resource_exhaustion_seconds",
            ),
            (
                f"{namespace}_resource_check_latency_seconds",
                "How long the last check of each watched resource took",
                ("name", "type", "resource"),
                "resource_check_latency_seconds",
            ),
            (
                f"{namespace}_adaptive_limit",
                "Current limit of each adaptive concurrency limiter (calls at once)",
                ("name",),
                "adaptive_limit",
            ),
            (
                f"{namespace}_adaptive_limit_reason",
                "Why each adaptive concurrency limit last changed (1 on the current reason)",
                ("name", "reason"),
                "adaptive_limit_reason",
            ),
            (
                f"{namespace}_component_error_rate",
                "Error rate of each component over its sliding window",
                ("name", "component"),
                "component_error_rate",
            ),
            (
                f"{namespace}_queue_depth",
                "Requests waiting in each request queue",
                ("name",),
                "queue_depth",
            ),
            (
                f"{namespace}_queue_dead_letters",
                "Dead letters of each request queue",
                ("name",),
                "queue_dead_letters",
            ),
        )
        self.counters = (
            (
                f"{namespace}_queue_requests",
                "Requests this process's request queues handled, skipped (their key was done), "
                "retried, sent to the dead letters or dropped as expired",
                ("name", "outcome"),
                "queue_requests",
            ),
        )

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        for make, families in (
            (GaugeMetricFamily, self.gauges),
            (CounterMetricFamily, self.counters),
        ):
            for metric, documentation, labels, kind in families:
                family = make(metric, documentation, labels=list(labels))
                for values, value in sorted(_labelled(kind, len(labels)).items()):
                    family.add_metric(list(values), value)
                yield family

    def describe(self) -> Iterator[Any]:
        return iter(())


def _labelled(kind: str, width: int) -> dict[tuple[str, ...], float]:
    """The readings of ``kind`` by label values; a reading of the wrong shape is skipped."""
    out: dict[tuple[str, ...], float] = {}
    for labels, value in _events.readings(kind):
        values = tuple(map(str, labels)) if isinstance(labels, tuple) else (str(labels),)
        if len(values) != width or not isinstance(value, int | float):
            _log.debug("skipped a malformed %s reading: %r = %r", kind, labels, value)
            continue
        out[values] = float(value)
    return out


def enable_prometheus(registry: Any = None, namespace: str = "buttress") -> PrometheusMetrics:
    """Keep Prometheus metrics of every buttress event from now on.

    Args:
        registry: a ``prometheus_client.CollectorRegistry`` (default: the global ``REGISTRY``).
        namespace: the metric name prefix (default ``buttress``).

    Returns:
        The metrics object; calling again with the same registry and namespace returns it.
    """
    prom = _client()
    registry = prom.REGISTRY if registry is None else registry
    if not isinstance(namespace, str) or not namespace.replace("_", "").isalnum():
        raise ValueError(f"namespace must be letters, digits and underscores, got {namespace!r}")
    key = (id(registry), namespace)
    with _LOCK:
        metrics = _ENABLED.get(key)
        if metrics is None:
            metrics = _ENABLED[key] = PrometheusMetrics(registry, namespace)
            _events.add_hook(metrics.hook)
    return metrics
