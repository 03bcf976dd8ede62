"""Prometheus metrics from real policies, on a private registry."""

from __future__ import annotations

import gc
import itertools
import weakref
from pathlib import Path

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
    events,
)
from buttress.instrumentation.prometheus import enable_prometheus
from buttress.queue import RequestQueue
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


def test_scraped_gauges_come_from_published_readings() -> None:
    registry = CollectorRegistry()
    metrics = enable_prometheus(registry, namespace="readings")
    metrics.disable()  # the gauges are read at scrape time, with or without the hook

    def rates() -> list[tuple[str, float]]:
        return [("erp", 0.25), ("crm", 1)]

    def health() -> list[tuple[tuple[str, str], float]]:
        return [
            (("svc", "llm_api"), 0.0),
            (("svc", "db"), 1.0),
            (("one label only",), 1.0),
            (("svc", "x"), "1"),
        ]

    def tiers() -> list[tuple[str, float]]:
        return [("svc", 2.0)]

    def broken() -> list[tuple[str, float]]:
        raise RuntimeError("a provider that fails")

    providers = [
        ("circuit_failure_rate", rates),
        ("circuit_failure_rate", broken),
        ("service_health", health),
        ("degradation_tier", tiers),
    ]
    for kind, provider in providers:
        events.add_reading(kind, provider)
    try:
        value = registry.get_sample_value
        assert value("readings_circuit_breaker_failure_rate", {"name": "erp"}) == 0.25
        assert value("readings_circuit_breaker_failure_rate", {"name": "crm"}) == 1.0
        assert value("readings_service_health", {"name": "svc", "service": "llm_api"}) == 0.0
        assert value("readings_service_health", {"name": "svc", "service": "db"}) == 1.0
        assert value("readings_degradation_tier", {"name": "svc"}) == 2.0
        text = generate_latest(registry).decode()
        assert "one label only" not in text  # readings of the wrong shape are skipped
        assert 'service="x"' not in text
    finally:
        for kind, provider in providers:
            events.remove_reading(kind, provider)
    assert (
        registry.get_sample_value("readings_circuit_breaker_failure_rate", {"name": "erp"}) is None
    )


def _fail() -> None:
    raise ConnectionError


def test_request_queues_publish_their_backlog_and_counts(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    metrics = enable_prometheus(registry, namespace="queues")
    metrics.disable()  # read at scrape time
    name = f"mail-{next(_n)}"

    def value(metric: str, **labels: str) -> float | None:
        return registry.get_sample_value(f"queues_{metric}", {"name": name, **labels})

    def make() -> RequestQueue:
        q = RequestQueue(name, storage=f"sqlite:///{tmp_path / 'q.db'}", max_attempts=1)

        @q.handler
        def send(to: str) -> None:
            if to == "bad":
                raise ValueError("no such mailbox")

        return q

    producer, consumer = make(), make()  # two objects of one queue: one backlog, counts summed
    for to in ("a", "b", "bad", "c"):
        producer.put("send", [to])
    assert value("queue_depth") == 4
    assert value("queue_dead_letters") == 0
    assert consumer.process(limit=2) == 2
    producer.put("send", ["a"], key="k-a")
    assert producer.process() == 3  # "bad" to the dead letters, "c", then "a" under its key
    assert value("queue_depth") == 0
    assert value("queue_dead_letters") == 1
    assert value("queue_requests_total", outcome="handled") == 4
    assert value("queue_requests_total", outcome="dead") == 1
    consumer.close()  # its counts stay in the totals: a counter never goes down
    producer.close()
    assert value("queue_requests_total", outcome="handled") == 4
    assert value("queue_depth") is None  # no open queue of that name
    # a queue dropped without close(): published, yet not kept alive by it; its counts stay
    dropped = make()
    dropped.counts["handled"] += 3  # (as if it had handled three)
    assert value("queue_requests_total", outcome="handled") == 7
    gone = weakref.ref(dropped)
    del dropped
    gc.collect()
    assert gone() is None
    assert value("queue_requests_total", outcome="handled") == 7


def test_a_scrape_reads_each_queue_backlog_once(tmp_path: Path) -> None:
    # the depth and the dead letters come from one backlog() per queue and scrape (on SQLite a
    # read walks the queue's range; it ran twice per scrape before)
    from buttress.queue.sqlite import SQLiteQueueStore

    reads: list[str] = []

    class Counted(SQLiteQueueStore):
        def backlog(self, queue: str, now: float) -> tuple[int, int]:
            reads.append(queue)
            return super().backlog(queue, now)

    registry = CollectorRegistry()
    enable_prometheus(registry, namespace="once").disable()
    store = Counted(tmp_path / "q.db")
    name = f"once-{next(_n)}"
    q = RequestQueue(name, storage=store, max_attempts=1)
    try:
        q.handler(_fail)
        q.put("_fail", [])
        q.put("_fail", [], key="second")
        q.process(limit=1)  # one to the dead letters, one still queued
        text = generate_latest(registry).decode()
        assert reads == [name]
        assert f'once_queue_depth{{name="{name}"}} 1.0' in text
        assert f'once_queue_dead_letters{{name="{name}"}} 1.0' in text
        generate_latest(registry)
        assert reads == [name, name]  # each scrape reads afresh
    finally:
        q.close()
        store.close()


def test_a_queue_whose_store_fails_does_not_hide_the_others(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    registry = CollectorRegistry()
    enable_prometheus(registry, namespace="failing").disable()
    healthy = RequestQueue(f"ok-{next(_n)}", storage="memory://")
    broken = RequestQueue(f"down-{next(_n)}", storage=f"sqlite:///{tmp_path / 'q.db'}")
    try:
        healthy.handler(print)
        healthy.put("print", ["x"])
        broken.store.close()  # every read of it fails from now on
        value = registry.get_sample_value
        assert value("failing_queue_depth", {"name": healthy.name}) == 1
        assert value("failing_queue_depth", {"name": broken.name}) is None
        assert f"reading the backlog of queue {broken.name!r} failed" in caplog.text
    finally:
        healthy.close()
        broken.close()
