"""OpenTelemetry metrics and spans from real policies, read back through the SDK's in-memory reader
and exporter, and compared with the Prometheus metrics of the same run."""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import Histogram, InMemoryMetricReader, Sum
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from buttress import events
from buttress.instrumentation.otel import OTelInstrumentation, enable_otel
from buttress.instrumentation.prometheus import enable_prometheus
from buttress.testing import FakeClock
from policy_workload import exercise

_n = itertools.count()


@dataclass
class Otel:
    reader: InMemoryMetricReader
    exporter: InMemorySpanExporter
    instrumentation: OTelInstrumentation

    def metrics(self) -> dict[str, Any]:
        """Every metric of one collection by instrument name."""
        data = self.reader.get_metrics_data()
        assert data is not None
        out: dict[str, Any] = {}
        for resource in data.resource_metrics:
            for scope in resource.scope_metrics:
                assert scope.scope.name == "buttress"
                for metric in scope.metrics:
                    out[metric.name] = metric
        return out

    def points(self) -> dict[str, list[Any]]:
        return {name: list(m.data.data_points) for name, m in self.metrics().items()}


@pytest.fixture
def otel() -> Iterator[Otel]:
    reader = InMemoryMetricReader()
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    meter_provider = MeterProvider(metric_readers=[reader])
    instrumentation = enable_otel(meter_provider, tracer_provider)
    try:
        yield Otel(reader, exporter, instrumentation)
    finally:
        instrumentation.disable()
        meter_provider.shutdown()
        tracer_provider.shutdown()


def _prometheus_name(name: str, unit: str, counter: bool) -> str:
    """The name an OpenTelemetry-to-Prometheus exporter gives an instrument."""
    base = name.replace(".", "_")
    suffix = {"s": "seconds", "%": "percent", "1": "ratio"}.get(unit)
    if suffix and not base.endswith(suffix):
        base += f"_{suffix}"
    return base + "_total" if counter else base


def _samples(registry: CollectorRegistry) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    from prometheus_client import generate_latest

    out = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            out[sample.name, frozenset(sample.labels.items())] = sample.value
    return out


def test_otel_counts_equal_prometheus_counts_for_the_same_run(otel: Otel, clock: FakeClock) -> None:
    registry = CollectorRegistry()
    prometheus = enable_prometheus(registry)
    tag = f"otel{next(_n)}"
    try:
        keep = exercise(tag, clock)
        prom = _samples(registry)
        metrics = otel.metrics()
    finally:
        prometheus.disable()
    assert keep

    compared: set[tuple[str, frozenset[tuple[str, str]]]] = set()
    for name, metric in metrics.items():
        histogram = isinstance(metric.data, Histogram)
        counter = isinstance(metric.data, Sum) and metric.data.is_monotonic
        prom_name = _prometheus_name(name, metric.unit or "", counter)
        if metric.unit == "1":
            prom_name = name.replace(".", "_")  # the ratios: Prometheus names them without _ratio
        for point in metric.data.data_points:
            labels = {k: str(v) for k, v in point.attributes.items()}
            if tag not in "".join(labels.values()):
                continue  # another test's policies, still alive in this process
            key = frozenset(labels.items())
            if histogram:
                assert point.count == prom[f"{prom_name}_count", key], (name, labels)
                assert point.sum == pytest.approx(prom[f"{prom_name}_sum", key])
                le = frozenset({*key, ("le", "0.005")})
                assert point.bucket_counts[0] == prom[f"{prom_name}_bucket", le]
            else:
                assert (prom_name, key) in prom, f"{name} {labels}: no {prom_name} in Prometheus"
                assert point.value == prom[prom_name, key], (name, labels)
            compared.add((prom_name, key))
    # and every Prometheus sample of this run has its OpenTelemetry twin
    ours = {
        (name.removesuffix("_count"), labels)
        for name, labels in prom
        if tag in "".join(v for _, v in labels)
        and not name.endswith(("_bucket", "_sum", "_created"))
    }
    assert len(ours) > 20
    assert compared == ours
    for expected in (
        "buttress.circuit_breaker.calls",
        "buttress.circuit_breaker.state",
        "buttress.circuit_breaker.state_transitions",
        "buttress.circuit_breaker.call_duration",
        "buttress.circuit_breaker.failure_rate",
        "buttress.retry.attempts",
        "buttress.retry.exhausted",
        "buttress.timeouts",
        "buttress.fallbacks",
        "buttress.rejections",
        "buttress.degradation.tier",
        "buttress.degradation.tier_changes",
        "buttress.service.health",
        "buttress.resource.status",
        "buttress.resource.usage",
        "buttress.resource.exhaustion",
        "buttress.resource.check_latency",
        "buttress.adaptive.limit",
        "buttress.component.error_rate",
    ):
        assert expected in metrics, expected
    assert metrics["buttress.circuit_breaker.call_duration"].unit == "s"
    assert metrics["buttress.resource.usage"].unit == "%"
    assert metrics["buttress.circuit_breaker.calls"].unit == "{call}"


def _spans(otel: Otel, tag: str) -> list[Any]:
    return [
        s
        for s in otel.exporter.get_finished_spans()
        if tag in str(s.attributes.get("buttress.policy_name", ""))
    ]


def test_a_span_per_policy_decision(otel: Otel, clock: FakeClock) -> None:
    tag = f"spans{next(_n)}"
    keep = exercise(tag, clock)
    assert keep
    spans = _spans(otel, tag)
    by_name: dict[str, list[Any]] = {}
    for span in spans:
        by_name.setdefault(span.name, []).append(span)

    # the retry: two retries then a give-up on the first call, one retry on the second
    scheduled = by_name["buttress.retry.retry_scheduled"]
    assert [s.attributes["buttress.attempt"] for s in scheduled] == [1, 2, 1]
    assert {s.attributes["exception.type"] for s in scheduled} == {"ConnectionError"}
    assert scheduled[0].attributes["buttress.delay"] >= 0
    (gave_up,) = by_name["buttress.retry.gave_up"]
    assert gave_up.attributes["buttress.reason"] == "attempts"
    assert gave_up.attributes["buttress.attempts"] == 3
    assert gave_up.status.status_code is StatusCode.ERROR

    rejected = by_name["buttress.circuit.call_rejected"]
    assert len(rejected) == 3
    assert rejected[0].attributes["buttress.reason"] == "circuit_open"
    assert rejected[0].attributes["buttress.retry_after"] == pytest.approx(10)
    assert rejected[0].status.status_code is StatusCode.ERROR
    (limited,) = by_name["buttress.ratelimit.call_rejected"]
    assert limited.attributes["buttress.reason"] == "rate_limited"
    assert limited.attributes["buttress.retry_after"] == pytest.approx(1.0)
    assert len(by_name["buttress.bulkhead.call_rejected"]) == 1

    (timed_out,) = by_name["buttress.timeout.timed_out"]
    assert timed_out.attributes["buttress.timeout"] == 1.0
    assert timed_out.status.status_code is StatusCode.ERROR

    fallbacks = by_name["buttress.fallback.fallback_used"]
    assert sorted(s.attributes["buttress.strategy"] for s in fallbacks) == ["DEFAULT", "NONE"]
    assert fallbacks[0].attributes["exception.message"] == "down"
    assert fallbacks[0].status.status_code is StatusCode.UNSET

    changes = by_name["buttress.circuit.state_changed"]
    assert [(s.attributes["buttress.old"], s.attributes["buttress.new"]) for s in changes] == [
        ("CLOSED", "OPEN"),
        ("OPEN", "HALF_OPEN"),
        ("HALF_OPEN", "CLOSED"),
    ]
    (tier,) = by_name["buttress.degradation.tier_changed"]
    assert tier.attributes["buttress.new"] == "TIER_2_CORE"
    # successes take no decision: no span for them
    assert "buttress.circuit.call_completed" not in by_name


def test_decision_spans_nest_under_the_current_span(otel: Otel, clock: FakeClock) -> None:
    from buttress import Retry

    tracer = otel.instrumentation.tracer
    name = f"nest{next(_n)}"
    outcomes = iter([ConnectionError("once"), None])

    def call() -> str:
        error = next(outcomes)
        if error is not None:
            raise error
        return "ok"

    with tracer.start_as_current_span("handle request") as request:
        assert Retry(max_attempts=2, base_delay=0, name=name).call(call) == "ok"
    (retry,) = _spans(otel, name)
    assert retry.parent is not None
    assert retry.parent.span_id == request.get_span_context().span_id
    assert retry.context.trace_id == request.get_span_context().trace_id


@dataclass(frozen=True, slots=True, kw_only=True)
class ProtocolStep(events.Event):
    """The shape of the fallback protocols' step event, for as long as buttress has none: the
    instrumentation knows the event by its class name only."""

    kind: ClassVar[str] = "protocol_step"
    resource: str
    strategy: str
    target: str | None
    outcome: str
    elapsed: float
    exception: BaseException | None = None


def test_protocol_steps_are_counted_and_traced_by_class_name(otel: Otel) -> None:
    step = getattr(events, "ProtocolStep", ProtocolStep)
    registry = CollectorRegistry()
    prometheus = enable_prometheus(registry)
    name = f"proto{next(_n)}"
    steps = [
        ("RETRY", None, "failed", ConnectionError("429")),
        ("SWITCH_PROVIDER", "anthropic", "succeeded", None),
        ("SWITCH_PROVIDER", "anthropic", "succeeded", None),
    ]
    try:
        for strategy, target, outcome, error in steps:
            events.emit(
                step(
                    policy="protocol",
                    name=name,
                    at=0.0,
                    resource="api_quota",
                    strategy=strategy,
                    target=target,
                    outcome=outcome,
                    elapsed=0.25,
                    exception=error,
                )
            )
    finally:
        prometheus.disable()
    counts = {
        (p.attributes["strategy"], p.attributes["target"], p.attributes["outcome"]): p.value
        for p in otel.points()["buttress.protocol.steps"]
        if p.attributes["name"] == name
    }
    # the labels are the Prometheus counter's: a step without a target has target=""
    assert counts == {("RETRY", "", "failed"): 1, ("SWITCH_PROVIDER", "anthropic", "succeeded"): 2}
    if step is not ProtocolStep:  # buttress has the event: Prometheus counts it, and the same
        prom = _samples(registry)
        for (strategy, target, outcome), value in counts.items():
            labels = {"name": name, "resource": "api_quota", "strategy": strategy}
            labels |= {"target": target, "outcome": outcome}
            assert prom["buttress_protocol_steps_total", frozenset(labels.items())] == value
    spans = _spans(otel, name)
    assert [s.name for s in spans] == ["buttress.protocol.protocol_step"] * 3
    first = spans[0].attributes
    assert first["buttress.strategy"] == "RETRY"
    assert first["buttress.resource"] == "api_quota"
    assert first["buttress.outcome"] == "failed"
    assert first["buttress.elapsed"] == 0.25
    assert first["exception.type"] == "ConnectionError"
    assert "buttress.target" not in first  # on a span, a missing target is left out
    assert spans[1].attributes["buttress.target"] == "anthropic"


def test_disable_stops_recording(otel: Otel, clock: FakeClock) -> None:
    from buttress import Retry

    name = f"off{next(_n)}"
    retry = Retry(max_attempts=2, base_delay=0, name=name)
    with pytest.raises(ConnectionError):
        retry.call(_fail)
    assert [
        p.value for p in otel.points()["buttress.retry.attempts"] if p.attributes["name"] == name
    ] == [1]
    otel.instrumentation.disable()
    name = f"off{next(_n)}"
    with pytest.raises(ConnectionError):
        Retry(max_attempts=2, base_delay=0, name=name).call(_fail)
    points = otel.points().get("buttress.retry.attempts", [])
    assert all(p.attributes["name"] != name for p in points)
    assert _spans(otel, name) == []


def test_enable_refuses_what_is_not_a_provider() -> None:
    with pytest.raises(TypeError, match="meter_provider"):
        enable_otel(meter_provider=object())
    with pytest.raises(TypeError, match="tracer_provider"):
        enable_otel(tracer_provider="tracer")


def test_same_providers_give_the_same_instrumentation() -> None:
    reader = InMemoryMetricReader()
    meter_provider, tracer_provider = MeterProvider(metric_readers=[reader]), TracerProvider()
    first = enable_otel(meter_provider, tracer_provider)
    try:
        assert enable_otel(meter_provider, tracer_provider) is first
        assert events.HOOKS.count(first.hook) == 1
    finally:
        first.disable()
    assert first.hook not in events.HOOKS


def test_module_docstring_table_names_every_instrument(otel: Otel, clock: FakeClock) -> None:
    from buttress.instrumentation import otel as module

    exercise(f"doc{next(_n)}", clock)
    documented = set(re.findall(r"``(buttress\.[a-z_.]+)``", module.__doc__ or ""))
    assert set(otel.points()) <= documented


def _fail() -> None:
    raise ConnectionError("down")
