"""Circuit breaker: transitions, recovery, windows, slow calls, registry, configuration."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import pytest

from buttress import (
    CircuitBreaker,
    CircuitBreakerConfig,
    CircuitOpenError,
    CircuitState,
    circuit_breaker,
    circuit_breakers,
    get_circuit_breaker,
)
from buttress.events import CircuitStateChanged
from buttress.testing import FakeClock
from conftest import make, run

_names = itertools.count()


def unique(prefix: str = "cb") -> str:
    return f"test-{prefix}-{next(_names)}"


def failing(*args: Any) -> None:
    raise ConnectionError("down")


def ok(*args: Any) -> str:
    return "ok"


def trip(cb: CircuitBreaker, n: int) -> None:
    for _ in range(n):
        with pytest.raises(ConnectionError):
            cb.call(failing)


def test_trips_after_fail_max_consecutive_failures(mode: str, clock: FakeClock) -> None:
    cb = CircuitBreaker(fail_max=3, timeout_duration=60)
    fn = cb(make(mode, failing))
    for _ in range(3):
        with pytest.raises(ConnectionError):
            run(fn())
    assert cb.state is CircuitState.OPEN
    with pytest.raises(CircuitOpenError) as info:
        run(fn())
    assert info.value.retry_after == pytest.approx(60)


def test_success_resets_the_consecutive_count(mode: str, clock: FakeClock) -> None:
    cb = CircuitBreaker(fail_max=3)
    bad, good = cb(make(mode, failing)), cb(make(mode, ok))
    for _ in range(5):
        for _ in range(2):
            with pytest.raises(ConnectionError):
                run(bad())
        run(good())
    assert cb.state is CircuitState.CLOSED
    assert cb.failure_count == 0


def test_recovery_probe_success_closes(mode: str, clock: FakeClock) -> None:
    cb = CircuitBreaker(fail_max=1, timeout_duration=30)
    trip(cb, 1)
    clock.advance(29.9)
    assert cb.state is CircuitState.OPEN
    with pytest.raises(CircuitOpenError) as info:
        cb.call(ok)
    assert info.value.retry_after == pytest.approx(0.1)
    clock.advance(0.1)
    assert cb.state is CircuitState.HALF_OPEN
    assert run(cb(make(mode, ok))()) == "ok"
    assert cb.state is CircuitState.CLOSED


def test_recovery_probe_failure_reopens(mode: str, clock: FakeClock) -> None:
    cb = CircuitBreaker(fail_max=1, timeout_duration=30)
    trip(cb, 1)
    clock.advance(30)
    with pytest.raises(ConnectionError):
        run(cb(make(mode, failing))())
    assert cb.state is CircuitState.OPEN
    assert cb.retry_after == pytest.approx(30)


def test_half_open_admits_only_the_configured_probes(clock: FakeClock) -> None:
    cb = CircuitBreaker(fail_max=1, timeout_duration=10, half_open_max_calls=2)
    trip(cb, 1)
    clock.advance(10)
    cb.__enter__()
    cb.__enter__()
    with pytest.raises(CircuitOpenError):
        cb.call(ok)
    cb.__exit__(None, None, None)
    assert cb.state is CircuitState.HALF_OPEN  # needs two successes
    cb.__exit__(None, None, None)
    assert cb.state is CircuitState.CLOSED


def test_probe_timeout_counts_as_failure(clock: FakeClock) -> None:
    cb = CircuitBreaker(fail_max=1, timeout_duration=10, probe_timeout=5)
    trip(cb, 1)
    clock.advance(10)
    cb.__enter__()  # a probe that hangs
    clock.advance(5)
    with pytest.raises(CircuitOpenError):
        cb.call(ok)  # the hung probe is written off: open again
    assert cb.state is CircuitState.OPEN
    cb.__exit__(None, None, None)  # its late success changes nothing
    assert cb.state is CircuitState.OPEN


def test_excluded_exceptions_do_not_count(mode: str, clock: FakeClock) -> None:
    cb = CircuitBreaker(fail_max=1, excluded_exceptions=(KeyError,))

    def missing() -> None:
        raise KeyError("k")

    for _ in range(3):
        with pytest.raises(KeyError):
            run(cb(make(mode, missing))())
    assert cb.state is CircuitState.CLOSED


def test_failure_exceptions_limit_what_counts(clock: FakeClock) -> None:
    cb = CircuitBreaker(fail_max=1, failure_exceptions=(TimeoutError,))
    with pytest.raises(ConnectionError):
        cb.call(failing)
    assert cb.state is CircuitState.CLOSED


def test_count_window_failure_rate(clock: FakeClock) -> None:
    cb = CircuitBreaker(fail_max=1000, failure_rate_threshold=0.5, window_size=10, minimum_calls=10)
    for i in range(9):
        if i % 2:
            trip(cb, 1)
        else:
            cb.call(ok)
    assert cb.state is CircuitState.CLOSED  # 9 calls < minimum
    trip(cb, 1)  # 5 failures of 10
    assert cb.state is CircuitState.OPEN


def test_count_window_slides(clock: FakeClock) -> None:
    cb = CircuitBreaker(fail_max=1000, failure_rate_threshold=0.5, window_size=4, minimum_calls=4)
    trip(cb, 1)
    for _ in range(5):
        cb.call(ok)
    assert cb.failure_rate == 0.0  # the failure slid out
    trip(cb, 1)
    assert cb.state is CircuitState.CLOSED  # 1 of 4


def test_time_window_failure_rate(clock: FakeClock) -> None:
    cb = CircuitBreaker(
        fail_max=1000,
        failure_rate_threshold=0.5,
        window_type="time",
        window_size=10,
        minimum_calls=4,
    )
    trip(cb, 2)
    clock.advance(20)  # those failures leave the window
    cb.call(ok)
    cb.call(ok)
    trip(cb, 1)
    assert cb.state is CircuitState.CLOSED
    trip(cb, 1)  # 2 of 4 within 10 s
    assert cb.state is CircuitState.OPEN


def test_slow_calls_trip(clock: FakeClock) -> None:
    cb = CircuitBreaker(
        fail_max=1000,
        slow_call_duration=1.0,
        slow_call_rate_threshold=0.5,
        window_size=4,
        minimum_calls=4,
    )

    def slow() -> str:
        clock.sleep(2)
        return "slow"

    cb.call(ok)
    cb.call(ok)
    cb.call(slow)
    assert cb.state is CircuitState.CLOSED
    cb.call(slow)
    assert cb.state is CircuitState.OPEN


def test_context_manager_sync_and_async(clock: FakeClock) -> None:
    cb = CircuitBreaker(fail_max=2)
    with pytest.raises(ConnectionError), cb:
        failing()

    async def scenario() -> None:
        with pytest.raises(ConnectionError):
            async with cb:
                failing()

    asyncio.run(scenario())
    assert cb.state is CircuitState.OPEN


def test_manual_control_and_listeners(clock: FakeClock) -> None:
    cb = CircuitBreaker(fail_max=5)
    seen: list[CircuitStateChanged] = []
    cb.add_listener(seen.append)
    cb.open()
    assert cb.state is CircuitState.OPEN
    cb.close()
    assert cb.state is CircuitState.CLOSED
    trip(cb, 2)
    cb.reset()
    assert cb.failure_count == 0
    assert [(e.old, e.new) for e in seen] == [
        (CircuitState.CLOSED, CircuitState.OPEN),
        (CircuitState.OPEN, CircuitState.CLOSED),
    ]
    assert seen[0].reason == "opened manually"


def test_registry_shares_state_by_name(clock: FakeClock) -> None:
    name = unique("shared")

    @circuit_breaker(name, failure_threshold=2, recovery_timeout=60)
    def a() -> None:
        raise ConnectionError

    @circuit_breaker(name)
    def b() -> str:
        return "b"

    for _ in range(2):
        with pytest.raises(ConnectionError):
            a()
    with pytest.raises(CircuitOpenError):
        b()
    same = CircuitBreaker(CircuitBreakerConfig(name=name, fail_max=2, timeout_duration=60))
    assert same.state is CircuitState.OPEN
    assert name in circuit_breakers()
    assert get_circuit_breaker(name).state is CircuitState.OPEN


def test_registry_refuses_a_conflicting_configuration() -> None:
    name = unique("conflict")
    CircuitBreaker(CircuitBreakerConfig(name=name, fail_max=2))
    with pytest.raises(ValueError, match=r"already registered .*fail_max=3 vs 2"):
        CircuitBreaker(CircuitBreakerConfig(name=name, fail_max=3))


def test_unnamed_breakers_are_private() -> None:
    a, b = CircuitBreaker(fail_max=1), CircuitBreaker(fail_max=1)
    a.open()
    assert b.state is CircuitState.CLOSED


def test_aliases() -> None:
    config = CircuitBreakerConfig(failure_threshold=7, recovery_timeout=12)
    assert (config.fail_max, config.timeout_duration) == (7, 12)
    with pytest.raises(ValueError, match="fail_max and its alias failure_threshold disagree"):
        CircuitBreakerConfig(fail_max=3, failure_threshold=4)


def test_env_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CIRCUIT_FAILURE_THRESHOLD", "9")
    monkeypatch.setenv("CIRCUIT_RECOVERY_TIMEOUT", "15")
    config = CircuitBreakerConfig()
    assert (config.fail_max, config.timeout_duration) == (9, 15)
    monkeypatch.setenv("CIRCUIT_RECOVERY_TIMEOUT", "soon")
    with pytest.raises(ValueError, match="CIRCUIT_RECOVERY_TIMEOUT"):
        CircuitBreakerConfig()


@pytest.mark.parametrize(
    ("kwargs", "text"),
    [
        ({"fail_max": 0}, "fail_max must be >= 1"),
        ({"timeout_duration": -1}, "timeout_duration must be >= 0"),
        ({"timeout_duration": float("nan")}, "NaN"),
        ({"failure_rate_threshold": 1.5}, "failure_rate_threshold must be <= 1"),
        ({"window_type": "sliding"}, "window_type must be"),
        ({"half_open_max_calls": 0}, "half_open_max_calls must be >= 1"),
        ({"slow_call_duration": 1.0}, "go together"),
        (
            {"name": "w", "storage": "memory://", "failure_rate_threshold": 0.5},
            "windows are kept in memory",
        ),
        ({"fail_mode": "sideways"}, "fail_mode must be one of local, open, closed"),
        ({"storage": "memory://"}, "needs a name: the name is what processes share"),
        ({"name": ""}, "name must be a non-empty string"),
    ],
)
def test_invalid_configuration(kwargs: dict[str, Any], text: str) -> None:
    with pytest.raises(ValueError, match=text):
        CircuitBreakerConfig(**kwargs)
