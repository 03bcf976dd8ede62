"""Prometheus metrics from real policies, on a private registry."""

from __future__ import annotations

import itertools

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from buttress import (
    CircuitBreaker,
    CircuitBreakerConfig,
    CircuitOpenError,
    Fallback,
    FallbackStrategy,
    Retry,
    Timeout,
)
from buttress.instrumentation.prometheus import enable_prometheus
from buttress.testing import FakeClock

_n = itertools.count()


def test_breaker_retry_timeout_fallback_metrics(clock: FakeClock) -> None:
    registry = CollectorRegistry()
    metrics = enable_prometheus(registry)
    assert enable_prometheus(registry) is metrics
    name = f"prom-{next(_n)}"
    try:
        cb = CircuitBreaker(CircuitBreakerConfig(name=name, fail_max=2, timeout_duration=10))
        assert cb.call(lambda: 1) == 1
        for _ in range(2):
            with pytest.raises(ConnectionError):
                cb.call(_fail)
        with pytest.raises(CircuitOpenError):
            cb.call(lambda: 1)
        with pytest.raises(ConnectionError):
            Retry(max_attempts=3, base_delay=1, name="r").call(_fail)
        with pytest.raises(TimeoutError):
            Timeout(timeout_seconds=1, name="t").call(lambda: clock.sleep(5))
        Fallback(strategy=FallbackStrategy.NONE, name="f").call(_fail)
    finally:
        metrics.disable()

    def value(metric: str, **labels: str) -> float | None:
        return registry.get_sample_value(f"buttress_{metric}", labels)

    assert value("circuit_breaker_state", name=name) == 1
    assert value("circuit_breaker_calls_total", name=name, status="success") == 1
    assert value("circuit_breaker_calls_total", name=name, status="failure") == 2
    assert value("circuit_breaker_calls_total", name=name, status="rejected") == 1
    assert (
        value(
            "circuit_breaker_state_transitions_total",
            name=name,
            from_state="closed",
            to_state="open",
        )
        == 1
    )
    assert value("circuit_breaker_call_duration_seconds_count", name=name) == 3
    assert value("circuit_breaker_failure_rate", name=name) == 0.0  # reset on opening
    assert value("retry_attempts_total", name="r") == 2
    assert value("retry_exhausted_total", name="r", reason="attempts") == 1
    assert value("timeouts_total", name="t") == 1
    assert value("fallbacks_total", name="f", strategy="NONE") == 1
    text = generate_latest(registry).decode()
    for metric in (
        "buttress_circuit_breaker_state",
        "buttress_circuit_breaker_calls_total",
        "buttress_circuit_breaker_state_transitions_total",
        "buttress_circuit_breaker_call_duration_seconds",
        "buttress_circuit_breaker_failure_rate",
    ):
        assert metric in text


def test_disabled_metrics_stop_counting(clock: FakeClock) -> None:
    registry = CollectorRegistry()
    metrics = enable_prometheus(registry, namespace="svc")
    metrics.disable()
    with pytest.raises(ConnectionError):
        Retry(max_attempts=2, base_delay=0, name="quiet").call(_fail)
    assert registry.get_sample_value("svc_retry_attempts_total", {"name": "quiet"}) is None
    with pytest.raises(ValueError, match="namespace"):
        enable_prometheus(registry, namespace="bad-name")


def _fail() -> None:
    raise ConnectionError
