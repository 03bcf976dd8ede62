"""Retry: schedules, counting, filters, server waits, deadlines, configuration, events."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from buttress import (
    ExponentialBackoff,
    FibonacciBackoff,
    FixedDelay,
    LinearBackoff,
    RateLimitExceeded,
    Retry,
    RetryStrategy,
    deadline,
    retry,
)
from buttress.events import Event, GaveUp, RetryScheduled, add_hook, remove_hook
from buttress.machines.backoff import Jitter, combine_with_retry_after, jittered
from buttress.testing import FakeClock
from conftest import make, run


class Flaky:
    def __init__(self, failures: int, exc: BaseException | None = None) -> None:
        self.failures = failures
        self.exc = exc or ConnectionError("down")
        self.calls = 0

    def __call__(self, *args: Any, **kwargs: Any) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.exc
        return "ok"


@pytest.mark.parametrize(
    ("strategy", "expected"),
    [
        (RetryStrategy.EXPONENTIAL, [1, 2, 4, 8, 16]),
        (RetryStrategy.LINEAR, [1, 2, 3, 4, 5]),
        (RetryStrategy.CONSTANT, [1, 1, 1, 1, 1]),
        (RetryStrategy.FIBONACCI, [1, 1, 2, 3, 5]),
    ],
)
def test_strategy_schedules(
    mode: str, clock: FakeClock, strategy: RetryStrategy, expected: list[float]
) -> None:
    body = Flaky(5)
    fn = retry(max_retries=5, base_delay=1.0, strategy=strategy, jitter=False)(make(mode, body))
    assert run(fn()) == "ok"
    assert clock.sleeps == expected


def test_backoff_objects_cap_at_max_delay() -> None:
    assert ExponentialBackoff(base_delay=2.0, max_delay=10).delay(4) == 10
    assert ExponentialBackoff(base_delay=0.5).delay(3) == 2.0
    assert LinearBackoff(base_delay=2).delay(3) == 6
    assert FixedDelay(base_delay=3).delay(9) == 3
    assert FibonacciBackoff(base_delay=1).delay(6) == 8
    assert ExponentialBackoff(base_delay=1, max_delay=60).delay(5000) == 60
    with pytest.raises(ValueError, match="max_delay must be >= base_delay"):
        ExponentialBackoff(base_delay=5, max_delay=1)
    with pytest.raises(ValueError, match="base_delay must be >= 0"):
        FixedDelay(base_delay=-1)


def test_jitter_bounds() -> None:
    for unit in (0.0, 0.25, 0.999):
        assert 0 <= jittered(4.0, Jitter.FULL, unit) <= 4.0
        assert 2.0 <= jittered(4.0, Jitter.EQUAL, unit) <= 4.0
        assert jittered(4.0, Jitter.NONE, unit) == 4.0


def test_retry_after_is_a_floor_and_jitter_only_adds() -> None:
    for unit in (0.0, 0.5, 0.999):
        wait = combine_with_retry_after(1.0, 5.0, Jitter.FULL, unit)
        assert 5.0 <= wait <= 5.5
    assert combine_with_retry_after(8.0, 5.0, Jitter.NONE, 0.3) == 8.0


def test_jitter_on_by_default_uses_the_random_source(mode: str, clock: FakeClock) -> None:
    body = Flaky(2)
    fn = retry(max_retries=2, base_delay=1.0, random=lambda: 0.5)(make(mode, body))
    run(fn())
    assert clock.sleeps == [0.5, 1.0]


def test_max_attempts_and_max_retries_count_differently(mode: str, clock: FakeClock) -> None:
    body = Flaky(100)
    with pytest.raises(ConnectionError):
        run(retry(max_attempts=3, base_delay=0)(make(mode, body))())
    assert body.calls == 3
    body = Flaky(100)
    with pytest.raises(ConnectionError):
        run(retry(max_retries=3, base_delay=0)(make(mode, body))())
    assert body.calls == 4
    assert clock.sleeps == []  # zero waits never call sleep


def test_both_counts_is_an_error() -> None:
    with pytest.raises(ValueError, match=r"max_attempts .* or max_retries .*not both"):
        Retry(max_attempts=3, max_retries=2)


def test_last_exception_propagates_unchanged(mode: str, clock: FakeClock) -> None:
    error = ConnectionError("the one")
    body = Flaky(100, error)
    with pytest.raises(ConnectionError) as info:
        run(retry(max_attempts=2)(make(mode, body))())
    assert info.value is error
    assert info.value.__cause__ is None
    assert info.value.__context__ is None


def test_retry_on_types_and_predicate(mode: str, clock: FakeClock) -> None:
    body = Flaky(1, KeyError("k"))
    with pytest.raises(KeyError):
        run(retry(retry_on=ConnectionError)(make(mode, body))())
    assert body.calls == 1
    body = Flaky(1, ValueError("transient"))
    fn = retry(retry_on=lambda exc: "transient" in str(exc))(make(mode, body))
    assert run(fn()) == "ok"
    assert body.calls == 2


def test_fail_fast_wins(mode: str, clock: FakeClock) -> None:
    body = Flaky(5, PermissionError("no"))
    with pytest.raises(PermissionError):
        run(retry(retry_on=OSError, fail_fast_on=PermissionError)(make(mode, body))())
    assert body.calls == 1


def test_base_exceptions_are_never_retried(mode: str, clock: FakeClock) -> None:
    body = Flaky(5, KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        run(retry()(make(mode, body))())
    assert body.calls == 1


def test_retry_on_result(mode: str, clock: FakeClock) -> None:
    answers = iter([None, None, "value"])
    fn = retry(retry_on_result=lambda r: r is None, base_delay=0)(make(mode, lambda: next(answers)))
    assert run(fn()) == "value"
    fn = retry(max_attempts=2, retry_on_result=lambda r: r is None)(make(mode, lambda: None))
    assert run(fn()) is None  # attempts ran out: the last result is returned


def test_retry_after_of_a_rejection_is_honoured(mode: str, clock: FakeClock) -> None:
    calls = 0

    def body() -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RateLimitExceeded("slow down", retry_after=7.0)
        return "ok"

    assert run(retry(base_delay=0.1, random=lambda: 0.99)(make(mode, body))()) == "ok"
    assert 7.0 <= clock.sleeps[0] <= 7.7


def test_time_limit_stops_retrying(mode: str, clock: FakeClock) -> None:
    body = Flaky(100)
    fn = retry(max_attempts=50, base_delay=1, jitter=False, time_limit=10)(make(mode, body))
    with pytest.raises(ConnectionError):
        run(fn())
    assert clock.now() <= 10
    assert clock.sleeps == [1, 2, 4]  # the next wait (8) would pass the limit


def test_deadline_stops_retrying(mode: str, clock: FakeClock) -> None:
    body = Flaky(100)
    fn = retry(max_attempts=50, base_delay=1, jitter=False)(make(mode, body))
    with deadline(5), pytest.raises(ConnectionError):
        run(fn())
    assert clock.sleeps == [1, 2]  # 1 + 2 = 3; waiting 4 more would reach the deadline


def test_env_defaults_and_malformed_env(monkeypatch: pytest.MonkeyPatch, clock: FakeClock) -> None:
    monkeypatch.setenv("RETRY_MAX_ATTEMPTS", "2")
    monkeypatch.setenv("RETRY_BASE_DELAY", "0.25")
    monkeypatch.setenv("RETRY_MAX_DELAY", "0.3")
    policy = Retry(jitter=False)
    assert policy.max_attempts == 2
    assert policy.backoff == ExponentialBackoff(base_delay=0.25, max_delay=0.3)
    assert Retry(max_attempts=7).max_attempts == 7  # explicit wins
    monkeypatch.setenv("RETRY_MAX_ATTEMPTS", "many")
    with pytest.raises(ValueError, match="RETRY_MAX_ATTEMPTS"):
        Retry()


@pytest.mark.parametrize(
    ("env", "kwargs", "names"),
    [
        ({"RETRY_MAX_DELAY": "0.5"}, {}, ["RETRY_MAX_DELAY='0.5'", "default base_delay 1.0"]),
        ({"RETRY_MAX_DELAY": "1"}, {"base_delay": 5}, ["RETRY_MAX_DELAY='1'", "base_delay=5"]),
        ({"RETRY_BASE_DELAY": "5"}, {"max_delay": 2}, ["max_delay=2", "RETRY_BASE_DELAY='5'"]),
        (
            {"RETRY_BASE_DELAY": "5", "RETRY_MAX_DELAY": "2"},
            {},
            ["RETRY_MAX_DELAY='2'", "RETRY_BASE_DELAY='5'"],
        ),
        ({"RETRY_BASE_DELAY": "120"}, {}, ["default max_delay 60.0", "RETRY_BASE_DELAY='120'"]),
        ({}, {"base_delay": 5, "max_delay": 1}, ["max_delay=1", "base_delay=5"]),
    ],
)
def test_a_max_delay_below_the_base_delay_is_refused_naming_both_sources(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], kwargs: dict[str, Any], names: list[str]
) -> None:
    for variable in ("RETRY_BASE_DELAY", "RETRY_MAX_DELAY", "BUTTRESS_ENV"):
        monkeypatch.delenv(variable, raising=False)
    for variable, value in env.items():
        monkeypatch.setenv(variable, value)
    with pytest.raises(ValueError, match="max_delay must be >= base_delay") as caught:
        Retry(**kwargs)
    for name in names:
        assert name in str(caught.value)


def test_an_explicit_base_delay_above_the_default_cap_is_the_cap(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("RETRY_MAX_DELAY", raising=False)
    policy = Retry(base_delay=120, jitter=False)
    assert policy.backoff == ExponentialBackoff(base_delay=120, max_delay=120)


@pytest.mark.parametrize(
    ("kwargs", "text"),
    [
        ({"max_attempts": 0}, "max_attempts must be >= 1"),
        ({"max_retries": -1}, "max_retries must be >= 0"),
        ({"base_delay": -1}, "base_delay must be >= 0"),
        ({"base_delay": float("nan")}, "NaN"),
        ({"strategy": "quadratic"}, "strategy must be a RetryStrategy"),
        ({"jitter": "some"}, "jitter must be"),
        ({"time_limit": 0}, "time_limit must be > 0"),
        ({"strategy": FixedDelay(), "base_delay": 2}, "belong to the backoff object"),
    ],
)
def test_invalid_configuration(kwargs: dict[str, Any], text: str) -> None:
    with pytest.raises((ValueError, TypeError), match=text):
        Retry(**kwargs)


def test_events_and_logging(mode: str, clock: FakeClock, caplog: pytest.LogCaptureFixture) -> None:
    seen: list[RetryScheduled] = []
    body = Flaky(100)
    fn = retry(max_attempts=3, base_delay=1, jitter=False, on_retry=seen.append, name="fetch")(
        make(mode, body)
    )
    with caplog.at_level(logging.DEBUG, logger="buttress"), pytest.raises(ConnectionError):
        run(fn())
    assert [(e.attempt, e.delay) for e in seen] == [(1, 1.0), (2, 2.0)]
    kinds = [(r.levelno, getattr(r, "event", None)) for r in caplog.records]
    assert kinds.count((logging.DEBUG, "retry_scheduled")) == 2
    assert (logging.WARNING, "repeated_first") in kinds  # the first give-up of 'fetch'
    assert (logging.DEBUG, "gave_up") in kinds  # the detail, per call
    gave_up = next(r for r in caplog.records if getattr(r, "event", None) == "gave_up")
    assert gave_up.policy_name == "fetch"  # type: ignore[attr-defined]
    assert gave_up.reason == "attempts"  # type: ignore[attr-defined]
    warning = next(r for r in caplog.records if r.levelno == logging.WARNING)
    assert warning.getMessage() == gave_up.getMessage()


def test_give_ups_warn_once_then_once_per_interval(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[Event] = []
    fn = retry(max_attempts=2, base_delay=0, name="erp")(Flaky(10_000))
    add_hook(seen.append)
    try:
        with caplog.at_level(logging.WARNING, logger="buttress"):
            for _ in range(1000):
                with pytest.raises(ConnectionError):
                    fn()
                clock.advance(0.01)  # 1,000 failed calls over 10 s
            clock.advance(0.5)
            with pytest.raises(ConnectionError):
                fn()
    finally:
        remove_hook(seen.append)
    lines = [r.getMessage() for r in caplog.records if r.name == "buttress.retry"]
    assert len(lines) == 2
    assert lines[0].startswith("retry 'erp': gave up after 2 attempt(s)")
    assert lines[1] == "1,000 calls to 'erp' failed after retrying in the last 10 s"
    assert sum(isinstance(e, GaveUp) for e in seen) == 1001  # hooks still see every one


def test_bare_decorator_and_methods(clock: FakeClock) -> None:
    class Client:
        def __init__(self) -> None:
            self.body = Flaky(1)

        @retry
        def get(self, key: str) -> str:
            return self.body(key)

    client = Client()
    assert client.get("x") == "ok"
    assert client.get.__name__ == "get"


def test_policy_object_call_and_acall(clock: FakeClock) -> None:
    import asyncio

    policy = Retry(max_retries=1, base_delay=0)
    assert policy.call(Flaky(1), "a") == "ok"
    body = Flaky(1)

    async def abody() -> str:
        return body()

    assert asyncio.run(policy.acall(abody)) == "ok"


def test_seed_000_spelling(clock: FakeClock) -> None:
    policy = Retry(max_attempts=5, strategy=ExponentialBackoff(base_delay=2.0), jitter=False)
    body = Flaky(4)
    assert policy.call(body) == "ok"
    assert clock.sleeps == [2, 4, 8, 16]


@pytest.mark.parametrize(("name", "error"), [(5, TypeError), ("", ValueError), (" ", ValueError)])
def test_a_name_must_be_a_non_empty_string(name: object, error: type[Exception]) -> None:
    with pytest.raises(error, match=f"name must be a non-empty string.*got {name!r}"):
        Retry(name=name)  # type: ignore[arg-type]
