"""HealthMonitor: components judged by their calls over a sliding window, fed by hand or events."""

from __future__ import annotations

import pytest

from buttress import CircuitBreaker, CircuitOpenError, Retry
from buttress.health import HealthMonitor, ResourceStatus
from buttress.testing import FakeClock

H, D = ResourceStatus.HEALTHY, ResourceStatus.DEGRADED
C, U = ResourceStatus.CRITICAL, ResourceStatus.UNAVAILABLE


def test_error_rate_over_the_window(clock: FakeClock) -> None:
    monitor = HealthMonitor("team", window=60, buckets=12)
    for _ in range(98):
        monitor.record_success("system")
    monitor.record_failure("system", TimeoutError("slow"))
    monitor.record_failure("system")
    state = monitor.component("system")
    assert state.error_rate == pytest.approx(0.02)
    assert state.calls == 100
    assert state.status is H
    assert state.as_dict()["error_rate"] == 0.02


def test_old_outcomes_leave_the_window(clock: FakeClock) -> None:
    monitor = HealthMonitor("team", window=60, buckets=12)
    for _ in range(10):
        monitor.record_failure("api", "boom")
    monitor.record_success("api")
    assert monitor.component("api").status is C
    clock.advance(30)
    for _ in range(10):
        monitor.record_success("api")
    assert monitor.component("api").error_rate == pytest.approx(10 / 21)
    clock.advance(35)  # the failures' bucket is now older than the window
    state = monitor.component("api")
    assert state.calls == 10
    assert state.error_rate == 0.0
    assert state.status is H


@pytest.mark.parametrize(
    ("successes", "failures", "status"),
    [
        (100, 0, H),
        (91, 9, H),
        (90, 10, D),
        (51, 49, D),
        (50, 50, C),
        (2, 2, H),  # under min_calls: the rate does not count yet
    ],
)
def test_status_from_the_error_rate(
    clock: FakeClock, successes: int, failures: int, status: ResourceStatus
) -> None:
    monitor = HealthMonitor("team")
    for i in range(successes + failures):  # failures spread out: never three in a row
        if (i % 2 == 0 and i // 2 < failures) or i >= 2 * successes:
            monitor.record_failure("c")
        else:
            monitor.record_success("c")
    state = monitor.component("c")
    assert (state.calls, state.failures) == (successes + failures, failures)
    assert state.status is status


def test_failures_in_a_row_make_it_unavailable_and_uptime_restarts(clock: FakeClock) -> None:
    monitor = HealthMonitor("team", fail_threshold=3)
    monitor.register("erp")
    clock.advance(100)
    monitor.record_success("erp")
    assert monitor.component("erp").uptime == 100.0
    for _ in range(3):
        monitor.record_failure("erp", "refused")
    state = monitor.component("erp")
    assert state.status is U
    assert state.uptime == 0.0
    assert state.last_error == "refused"
    clock.advance(50)
    monitor.record_success("erp")
    clock.advance(20)
    state = monitor.component("erp")
    assert state.status is not U
    assert state.uptime == 20.0


def test_errors_are_redacted(clock: FakeClock) -> None:
    monitor = HealthMonitor("team")
    monitor.record_failure("db", ConnectionError("postgresql://u:hunter2@db/x refused"))
    assert monitor.component("db").last_error == "ConnectionError: postgresql://u:***@db/x refused"


def test_a_watched_breaker_feeds_its_component(clock: FakeClock) -> None:
    monitor = HealthMonitor("team")
    monitor.register("payments", watch="hm-payments-breaker")
    breaker = CircuitBreaker(name="hm-payments-breaker", fail_max=3, timeout_duration=30)
    other = CircuitBreaker(name="hm-other-breaker", fail_max=3)

    def ok() -> int:
        return 1

    def bad() -> int:
        raise ConnectionError("down")

    try:
        for _ in range(7):
            breaker.call(ok)
            other.call(ok)
        for _ in range(3):
            with pytest.raises(ConnectionError):
                breaker.call(bad)
        for _ in range(2):
            with pytest.raises(CircuitOpenError):
                breaker.call(ok)
        state = monitor.component("payments")
        assert state.calls == 12  # 7 successes, 3 failures, 2 rejections; never other's calls
        assert state.failures == 5
        assert state.status is U
        assert "rejected" in (state.last_error or "")
        assert set(monitor.components()) == {"payments"}
    finally:
        monitor.detach()
        breaker.reset()


def test_a_retry_that_gives_up_counts_as_a_failure(clock: FakeClock) -> None:
    monitor = HealthMonitor("team")
    monitor.register("lookup", watch="hm-lookup", policies=["retry"])
    policy = Retry(max_retries=1, base_delay=0.1, name="hm-lookup")

    def bad() -> None:
        raise TimeoutError("slow")

    try:
        with pytest.raises(TimeoutError):
            policy.call(bad)
        state = monitor.component("lookup")
        assert state.failures == 1
        assert "gave up" in (state.last_error or "")
    finally:
        monitor.detach()


def test_detached_monitors_hear_nothing(clock: FakeClock) -> None:
    monitor = HealthMonitor("team")
    monitor.register("svc", watch="hm-detached")
    monitor.detach()
    breaker = CircuitBreaker(name="hm-detached")
    breaker.call(lambda: 1)
    assert monitor.component("svc").calls == 0


def test_bad_settings_say_what_is_wrong() -> None:
    with pytest.raises(ValueError, match="window"):
        HealthMonitor(window=0)
    with pytest.raises(ValueError, match="degraded_rate"):
        HealthMonitor(degraded_rate=0.6, critical_rate=0.5)
    with pytest.raises(ValueError, match="critical_rate"):
        HealthMonitor(critical_rate=1.5)
    monitor = HealthMonitor()
    with pytest.raises(ValueError, match="component name"):
        monitor.register("")
    with pytest.raises(TypeError, match="critical"):
        monitor.register("x", critical=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="policy kinds"):
        monitor.register("x", policies=[])
    monitor.register("a", watch="shared-name")
    try:
        with pytest.raises(ValueError, match="already feeds component 'a'"):
            monitor.register("b", watch="shared-name")
    finally:
        monitor.detach()
    with pytest.raises(KeyError, match="nope"):
        monitor.component("nope")
    with pytest.raises(TypeError, match="error"):
        monitor.record_failure("x", 42)  # type: ignore[arg-type]


def test_prometheus_gauge_of_component_error_rates(clock: FakeClock) -> None:
    prometheus_client = pytest.importorskip("prometheus_client")
    from buttress import enable_prometheus

    registry = prometheus_client.CollectorRegistry()
    metrics = enable_prometheus(registry, namespace="comptest")
    try:
        monitor = HealthMonitor("gauge-team")
        for _ in range(3):
            monitor.record_success("erp")
        monitor.record_failure("erp")
        labels = {"name": "gauge-team", "component": "erp"}
        assert registry.get_sample_value("comptest_component_error_rate", labels) == 0.25
    finally:
        metrics.disable()
