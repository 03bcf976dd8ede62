"""OpenTelemetry metrics and spans from buttress events.

:func:`enable_otel` installs an event hook (the same hook mechanism the Prometheus metrics use,
:func:`buttress.events.add_hook`) that records buttress's metrics through the OpenTelemetry
metrics API and a span for each decision a policy takes. Only ``opentelemetry-api`` is needed
(the ``otel`` extra); the application brings the SDK and its exporters, or passes its own
providers. Without an SDK the API's no-op providers make all of it free.

Theory of operation
-------------------
The metrics are the Prometheus ones (:mod:`buttress.instrumentation.prometheus`), with the same
meaning and label names, named and measured the OpenTelemetry way: dotted names without a
``_total`` suffix, the unit in the instrument's ``unit`` (UCUM: ``s``, ``%``, ``1``, annotations
such as ``{call}``). An OpenTelemetry-to-Prometheus exporter turns each back into the Prometheus
name (``buttress.circuit_breaker.calls`` with unit ``{call}`` becomes
``buttress_circuit_breaker_calls_total``; ``buttress.circuit_breaker.call_duration`` in ``s``
becomes ``buttress_circuit_breaker_call_duration_seconds``); only the two ratios, in unit ``1``,
gain the exporter's ``_ratio`` suffix.

=================================================  =============  ===========================
OpenTelemetry instrument (unit)                    kind           Prometheus name
=================================================  =============  ===========================
``buttress.circuit_breaker.state`` ({state})       gauge          ``..._circuit_breaker_state``
``buttress.circuit_breaker.calls`` ({call})        counter        ``..._calls_total``
``buttress.circuit_breaker.state_transitions``     counter        ``..._transitions_total``
``buttress.circuit_breaker.call_duration`` (s)     histogram      ``..._call_duration_seconds``
``buttress.circuit_breaker.failure_rate`` (1)      observed       ``..._failure_rate``
``buttress.retry.attempts`` ({retry})              counter        ``retry_attempts_total``
``buttress.retry.exhausted`` ({call})              counter        ``retry_exhausted_total``
``buttress.timeouts`` ({call})                     counter        ``timeouts_total``
``buttress.fallbacks`` ({call})                    counter        ``fallbacks_total``
``buttress.rejections`` ({call})                   counter        ``rejections_total``
``buttress.degradation.tier`` ({tier})             observed       ``degradation_tier``
``buttress.degradation.tier_changes``              counter        ``..._tier_changes_total``
``buttress.service.health`` (1 or 0)               observed       ``service_health``
``buttress.resource.status`` ({status})            observed       ``resource_status``
``buttress.resource.usage`` (%)                    observed       ``resource_usage_percent``
``buttress.resource.exhaustion`` (s)               observed       ``..._exhaustion_seconds``
``buttress.resource.check_latency`` (s)            observed       ``..._check_latency_seconds``
``buttress.adaptive.limit`` ({call})               observed       ``adaptive_limit``
``buttress.adaptive.limit_reason`` (1)             observed       ``adaptive_limit_reason``
``buttress.component.error_rate`` (1)              observed       ``component_error_rate``
``buttress.protocol.steps`` ({step})               counter        ``protocol_steps_total``
``buttress.queue.depth`` ({request})               observed       ``queue_depth``
``buttress.queue.dead_letters`` ({request})        observed       ``queue_dead_letters``
``buttress.queue.requests`` ({request})            observed sum   ``queue_requests_total``
=================================================  =============  ===========================

Counters and the histogram follow the events as they are emitted; the observed gauges are
asynchronous instruments whose callbacks read the values the policies and monitors publish with
:func:`buttress.events.add_reading`, when the SDK collects (so, like the Prometheus metrics, this
module never imports the policies: it sits below them in the layering).

Spans: each decision is one span, started and ended where the policy took it, so it nests under
whatever span is current (the request the application is serving):

* ``buttress.retry.retry_scheduled`` (attempt, delay, the exception) and
  ``buttress.retry.gave_up`` (attempts, reason; status ERROR);
* ``buttress.<policy>.call_rejected`` for an open breaker, a full bulkhead, a rate-limit refusal
  or a degradation tier (reason, retry_after, key; status ERROR);
* ``buttress.fallback.fallback_used`` (strategy, the exception it answered for);
* ``buttress.timeout.timed_out`` (the budget; status ERROR);
* ``buttress.circuit.state_changed`` and ``buttress.degradation.tier_changed``;
* protocol steps (the ``ProtocolStep`` event): one span each with every field of the event.

Attributes are the event's logging fields (:meth:`buttress.events.Event.log_fields`) under
``buttress.``: ``buttress.policy``, ``buttress.policy_name``, ``buttress.reason``... and, for an
exception, the semantic conventions' ``exception.type`` and ``exception.message``. Per-call
completions (``CallCompleted``) only feed the metrics.

Events are dispatched by class name, walking the event's class hierarchy once per class and
caching the answer, so event types this module does not import (``ProtocolStep``, a subclass a
policy uses for detail) are handled as soon as they exist.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from .. import events as _events

__all__ = ["OTelInstrumentation", "enable_otel"]

_log = logging.getLogger("buttress.otel")
_LOCK = threading.Lock()
_ENABLED: dict[tuple[int, int], OTelInstrumentation] = {}

#: The instrumentation scope: ``get_meter`` / ``get_tracer`` name.
SCOPE = "buttress"

# Prometheus client's default buckets, so the two histograms can be compared bucket for bucket.
_DURATION_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
)

# The gauges read when the SDK collects: (instrument, unit, description, reading kind, labels).
_OBSERVED: tuple[tuple[str, str, str, str, tuple[str, ...]], ...] = (
    (
        "buttress.circuit_breaker.failure_rate",
        "1",
        "Current failure rate of each circuit breaker",
        "circuit_failure_rate",
        ("name",),
    ),
    (
        "buttress.degradation.tier",
        "{tier}",
        "Current degradation tier (1 full, 2 core, 3 read-only, 4 maintenance)",
        "degradation_tier",
        ("name",),
    ),
    (
        "buttress.service.health",
        "1",
        "Last reported health of each service (1 healthy, 0 unhealthy)",
        "service_health",
        ("name", "service"),
    ),
    (
        "buttress.resource.status",
        "{status}",
        "Status of each watched resource (0 healthy, 1 degraded, 2 critical, 3 unavailable)",
        "resource_status",
        ("name", "type", "resource"),
    ),
    (
        "buttress.resource.usage",
        "%",
        "Usage of each watched resource at its last check",
        "resource_usage",
        ("name", "type", "resource"),
    ),
    (
        "buttress.resource.exhaustion",
        "s",
        "Predicted time until a watched resource reaches 100% at its current trend",
        "resource_exhaustion_seconds",
        ("name", "type", "resource"),
    ),
    (
        "buttress.resource.check_latency",
        "s",
        "How long the last check of each watched resource took",
        "resource_check_latency_seconds",
        ("name", "type", "resource"),
    ),
    (
        "buttress.adaptive.limit",
        "{call}",
        "Current limit of each adaptive concurrency limiter (calls at once)",
        "adaptive_limit",
        ("name",),
    ),
    (
        "buttress.adaptive.limit_reason",
        "1",
        "Why each adaptive concurrency limit last changed (1 on the current reason)",
        "adaptive_limit_reason",
        ("name", "reason"),
    ),
    (
        "buttress.component.error_rate",
        "1",
        "Error rate of each component over its sliding window",
        "component_error_rate",
        ("name", "component"),
    ),
    (
        "buttress.queue.depth",
        "{request}",
        "Requests waiting in each request queue",
        "queue_depth",
        ("name",),
    ),
    (
        "buttress.queue.dead_letters",
        "{request}",
        "Dead letters of each request queue",
        "queue_dead_letters",
        ("name",),
    ),
)
# The counts read when the SDK collects (monotonic sums), in the same form.
_OBSERVED_COUNTS: tuple[tuple[str, str, str, str, tuple[str, ...]], ...] = (
    (
        "buttress.queue.requests",
        "{request}",
        "Requests this process's request queues handled, skipped (their key was done), "
        "retried, sent to the dead letters or dropped as expired",
        "queue_requests",
        ("name", "outcome"),
    ),
)

# The protocol-step fields that become metric attributes: configured names and outcomes only,
# never per-call values, so the counter's cardinality stays bounded.
_STEP_LABELS = ("resource", "strategy", "target", "outcome")

Handler = Callable[[_events.Event], None]


def _api() -> tuple[Any, Any]:
    try:
        from opentelemetry import metrics, trace
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "OpenTelemetry instrumentation needs opentelemetry-api: pip install 'buttress[otel]'"
        ) from exc
    return metrics, trace


def _label(value: object) -> str:
    """An enum by its value (``closed``, ``3``), anything else as text; as Prometheus labels it."""
    return str(getattr(value, "value", value))


def _attribute(value: object) -> str | bool | int | float | None:
    if value is None or isinstance(value, str | bool | int | float):
        return value
    return str(value)


class OTelInstrumentation:
    """The instruments, the tracer and the hook that feeds them; made by :func:`enable_otel`."""

    def __init__(self, meter_provider: Any, tracer_provider: Any) -> None:
        metrics, trace = _api()
        self._ERROR = trace.StatusCode.ERROR
        self._Observation = metrics.Observation
        version = _version()
        meter = meter_provider.get_meter(SCOPE, version)
        self.meter = meter
        self.tracer = tracer_provider.get_tracer(SCOPE, version)
        self.breaker_state = meter.create_gauge(
            "buttress.circuit_breaker.state",
            unit="{state}",
            description="Circuit breaker state (0=closed, 1=open, 2=half_open)",
        )
        self.breaker_calls = meter.create_counter(
            "buttress.circuit_breaker.calls",
            unit="{call}",
            description="Calls through a circuit breaker by status",
        )
        self.breaker_transitions = meter.create_counter(
            "buttress.circuit_breaker.state_transitions",
            unit="{transition}",
            description="Circuit breaker state transitions",
        )
        self.breaker_duration = meter.create_histogram(
            "buttress.circuit_breaker.call_duration",
            unit="s",
            description="Duration of calls through a circuit breaker",
            explicit_bucket_boundaries_advisory=_DURATION_BUCKETS,
        )
        self.retry_attempts = meter.create_counter(
            "buttress.retry.attempts", unit="{retry}", description="Retries scheduled"
        )
        self.retry_exhausted = meter.create_counter(
            "buttress.retry.exhausted",
            unit="{call}",
            description="Retry policies that gave up, by reason",
        )
        self.timeouts = meter.create_counter(
            "buttress.timeouts", unit="{call}", description="Calls that ran out of time"
        )
        self.fallbacks = meter.create_counter(
            "buttress.fallbacks", unit="{call}", description="Fallbacks used, by strategy"
        )
        self.rejections = meter.create_counter(
            "buttress.rejections", unit="{call}", description="Calls refused before running"
        )
        self.tier_changes = meter.create_counter(
            "buttress.degradation.tier_changes",
            unit="{change}",
            description="Degradation tier changes",
        )
        self.protocol_steps = meter.create_counter(
            "buttress.protocol.steps",
            unit="{step}",
            description="Steps taken by fallback protocols, by resource, strategy and outcome",
        )
        self.observed = [
            meter.create_observable_gauge(
                name, callbacks=[self._reader(kind, labels)], unit=unit, description=doc
            )
            for name, unit, doc, kind, labels in _OBSERVED
        ] + [
            meter.create_observable_counter(
                name, callbacks=[self._reader(kind, labels)], unit=unit, description=doc
            )
            for name, unit, doc, kind, labels in _OBSERVED_COUNTS
        ]
        # Handlers by event class name; _dispatch caches the answer per class.
        self._handlers: dict[str, Handler] = {
            "CallCompleted": self._completed,
            "CircuitStateChanged": self._state_changed,
            "CallRejected": self._rejected,
            "RetryScheduled": self._retry_scheduled,
            "GaveUp": self._gave_up,
            "TimedOut": self._timed_out,
            "FallbackUsed": self._fallback_used,
            "TierChanged": self._tier_changed,
            "ProtocolStep": self._protocol_step,
        }
        self._dispatch: dict[type, Handler | None] = {}

    # -- the hook -------------------------------------------------------------------------------

    def hook(self, event: _events.Event) -> None:
        """The event hook (installed by :func:`enable_otel`)."""
        cls = type(event)
        try:
            handler = self._dispatch[cls]
        except KeyError:
            handler = self._dispatch[cls] = next(
                (self._handlers[c.__name__] for c in cls.__mro__ if c.__name__ in self._handlers),
                None,
            )
        if handler is not None:
            handler(event)

    def _completed(self, event: _events.Event) -> None:
        if event.policy == "circuit":
            outcome = getattr(event, "outcome", "")
            self.breaker_calls.add(1, {"name": event.name, "status": outcome})
            self.breaker_duration.record(getattr(event, "duration", 0.0), {"name": event.name})

    def _state_changed(self, event: _events.Event) -> None:
        old, new = getattr(event, "old", None), getattr(event, "new", None)
        attrs = {"name": event.name, "from_state": _label(old), "to_state": _label(new)}
        self.breaker_transitions.add(1, attrs)
        self.breaker_state.set(getattr(new, "code", 0), {"name": event.name})
        self._span(event)

    def _rejected(self, event: _events.Event) -> None:
        reason = getattr(event, "reason", "")
        self.rejections.add(1, {"policy": event.policy, "name": event.name, "reason": reason})
        if event.policy == "circuit":
            self.breaker_calls.add(1, {"name": event.name, "status": "rejected"})
        self._span(event, error=reason)

    def _retry_scheduled(self, event: _events.Event) -> None:
        self.retry_attempts.add(1, {"name": event.name})
        self._span(event)

    def _gave_up(self, event: _events.Event) -> None:
        reason = getattr(event, "reason", "")
        self.retry_exhausted.add(1, {"name": event.name, "reason": reason})
        self._span(event, error=f"gave up ({reason})")

    def _timed_out(self, event: _events.Event) -> None:
        self.timeouts.add(1, {"name": event.name})
        self._span(event, error="timed out")

    def _fallback_used(self, event: _events.Event) -> None:
        strategy = getattr(event, "strategy", "")
        self.fallbacks.add(1, {"name": event.name, "strategy": strategy})
        self._span(event)

    def _tier_changed(self, event: _events.Event) -> None:
        old, new = getattr(event, "old", None), getattr(event, "new", None)
        self.tier_changes.add(
            1, {"name": event.name, "from_tier": _label(old), "to_tier": _label(new)}
        )
        self._span(event)

    def _protocol_step(self, event: _events.Event) -> None:
        attrs = {"name": event.name}
        for field in _STEP_LABELS:
            value = getattr(event, field, None)
            attrs[field] = "" if value is None else _label(value)  # as the Prometheus labels
        self.protocol_steps.add(1, attrs)
        self._span(event)

    # -- spans ----------------------------------------------------------------------------------

    def _span(self, event: _events.Event, error: str | None = None) -> None:
        attributes: dict[str, str | bool | int | float] = {}
        exception: object = None
        for key, value in event.log_fields().items():
            if key == "exception":
                exception = getattr(event, "exception", None)
                continue
            converted = _attribute(value)
            if converted is not None:
                attributes[f"buttress.{key}"] = converted
        if isinstance(exception, BaseException):
            attributes["exception.type"] = type(exception).__qualname__
            attributes["exception.message"] = str(exception)
        span = self.tracer.start_span(
            f"buttress.{event.policy}.{event.kind}", attributes=attributes
        )
        if error is not None:
            span.set_status(self._ERROR, error)
        span.end()

    # -- observed gauges ------------------------------------------------------------------------

    def _reader(self, kind: str, labels: tuple[str, ...]) -> Callable[[Any], Iterable[Any]]:
        observation = self._Observation

        def read(options: Any) -> Iterator[Any]:
            for values, value in _readings(kind, len(labels)):
                yield observation(value, dict(zip(labels, values, strict=True)))

        read.__qualname__ = f"read_{kind}"
        return read

    def disable(self) -> None:
        """Stop recording (the instruments stay with the meter provider)."""
        _events.remove_hook(self.hook)
        with _LOCK:
            for key, value in list(_ENABLED.items()):
                if value is self:
                    del _ENABLED[key]


def _readings(kind: str, width: int) -> list[tuple[tuple[str, ...], float]]:
    """The readings of ``kind`` as label values; a reading of the wrong shape is skipped."""
    out: dict[tuple[str, ...], float] = {}
    for labels, value in _events.readings(kind):
        values = tuple(map(str, labels)) if isinstance(labels, tuple) else (str(labels),)
        if len(values) != width or not isinstance(value, int | float):
            _log.debug("skipped a malformed %s reading: %r = %r", kind, labels, value)
            continue
        out[values] = float(value)
    return sorted(out.items())


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("buttress")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "0"


def enable_otel(meter_provider: Any = None, tracer_provider: Any = None) -> OTelInstrumentation:
    """Record buttress's metrics and a span per policy decision through OpenTelemetry.

    Args:
        meter_provider: an OpenTelemetry ``MeterProvider`` (default: the global one,
            ``opentelemetry.metrics.get_meter_provider()``).
        tracer_provider: a ``TracerProvider`` (default: the global one).

    Returns:
        The instrumentation; calling again with the same providers returns it. ``disable()``
        removes its hook.
    """
    metrics, trace = _api()
    meter_provider = metrics.get_meter_provider() if meter_provider is None else meter_provider
    tracer_provider = trace.get_tracer_provider() if tracer_provider is None else tracer_provider
    for what, provider, method in (
        ("meter_provider", meter_provider, "get_meter"),
        ("tracer_provider", tracer_provider, "get_tracer"),
    ):
        if not callable(getattr(provider, method, None)):
            raise TypeError(
                f"{what} must be an OpenTelemetry provider with {method}(), got {provider!r}"
            )
    key = (id(meter_provider), id(tracer_provider))
    with _LOCK:
        instrumentation = _ENABLED.get(key)
        if instrumentation is None:
            instrumentation = OTelInstrumentation(meter_provider, tracer_provider)
            _ENABLED[key] = instrumentation
            _events.add_hook(instrumentation.hook)
    return instrumentation
