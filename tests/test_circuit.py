"""Circuit breaker: transitions, recovery, windows, slow calls, registry, configuration."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import pickle
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from buttress import (
    CircuitBreaker,
    CircuitBreakerConfig,
    CircuitOpenError,
    CircuitState,
    circuit_breaker,
    circuit_breakers,
    events,
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
    assert cb.failure_rate == 1.0  # held failing while open (the count restarts at the trip)
    clock.advance(0.1)
    assert cb.state is CircuitState.HALF_OPEN
    assert cb.failure_rate == 1.0
    assert run(cb(make(mode, ok))()) == "ok"
    assert cb.state is CircuitState.CLOSED
    assert cb.failure_rate == 0.0


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


# --- late outcomes: the generation a call was admitted in -----------------------------------------


def _through(entry: str, mode: str, cb: CircuitBreaker, body: Callable[[], Any]) -> Any:
    """Run ``body`` through ``cb`` by ``entry`` (decorator, call, with) as ``def`` or ``async def``;
    returns the result, or raises what it raised."""
    fn = make(mode, body)
    if entry == "decorator":
        return run(cb(fn)())
    if entry == "call":
        return run(cb.acall(fn) if mode == "async" else cb.call(fn))
    if mode == "sync":
        with cb:
            return fn()

    async def block() -> Any:
        async with cb:
            return await fn()

    return run(block())


@pytest.mark.parametrize("hooked", [False, True], ids=["no hook", "hook"])
@pytest.mark.parametrize("entry", ["decorator", "call", "with"])
def test_a_failure_admitted_before_a_trip_cannot_reopen_the_recovered_breaker(
    entry: str, mode: str, hooked: bool, clock: FakeClock
) -> None:
    cb = CircuitBreaker(fail_max=1, timeout_duration=10)

    def admitted_before_the_trip() -> None:
        trip(cb, 1)  # other calls trip the breaker ...
        clock.advance(10)
        assert cb.call(ok) == "ok"  # ... and a probe closes it again
        raise ConnectionError("the late failure of a call admitted in the old generation")

    hook = events.add_hook(lambda event: None) if hooked else None
    try:
        with pytest.raises(ConnectionError, match="late failure"):
            _through(entry, mode, cb, admitted_before_the_trip)
    finally:
        if hook is not None:
            events.remove_hook(hook)
    assert cb.state is CircuitState.CLOSED  # installing a hook changes nothing it decides
    assert cb.failure_count == 0


def test_a_late_success_does_not_clear_failures_counted_since(clock: FakeClock) -> None:
    cb = CircuitBreaker(fail_max=2, timeout_duration=10)

    def admitted_before_the_trip() -> str:
        trip(cb, 2)
        clock.advance(10)
        cb.call(ok)  # closed again, generation moved on
        trip(cb, 1)  # one failure in the new generation
        return "late"

    assert cb(admitted_before_the_trip)() == "late"
    assert cb.failure_count == 1


def test_every_entry_point_counts_and_resets(mode: str, clock: FakeClock) -> None:
    for entry in ("decorator", "call", "with"):
        cb = CircuitBreaker(fail_max=2)
        with pytest.raises(ConnectionError):
            _through(entry, mode, cb, failing)
        assert cb.failure_count == 1
        assert _through(entry, mode, cb, ok) == "ok"
        assert cb.failure_count == 0
        for _ in range(2):
            with pytest.raises(ConnectionError):
                _through(entry, mode, cb, failing)
        with pytest.raises(CircuitOpenError):
            _through(entry, mode, cb, ok)


def test_nested_blocks_settle_their_own_admissions(clock: FakeClock) -> None:
    cb = CircuitBreaker(fail_max=1, timeout_duration=10)
    trip(cb, 1)
    clock.advance(10)
    # the probe, and inside it a second caller, refused while the probe runs
    with cb, pytest.raises(CircuitOpenError), cb:
        pass
    assert cb.state is CircuitState.CLOSED


# --- refusals: cheap, counted, summarised ---------------------------------------------------------


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def log() -> Iterator[tuple[_Records, logging.Logger]]:
    handler = _Records()
    logger = logging.getLogger("buttress.circuit")
    logger.addHandler(handler)
    level = logger.level
    yield handler, logger
    logger.removeHandler(handler)
    logger.setLevel(level)


def test_refusals_log_one_warning_then_a_summary_per_interval(
    log: tuple[_Records, logging.Logger], clock: FakeClock
) -> None:
    handler, logger = log
    logger.setLevel(logging.DEBUG)
    name = unique("erp")
    cb = CircuitBreaker(name=name, fail_max=1, timeout_duration=3600)
    trip(cb, 1)
    for _ in range(1234):
        with contextlib.suppress(CircuitOpenError):
            cb.call(ok)
        clock.advance(0.008)  # 9.9 s of refusals
    clock.advance(0.2)
    with contextlib.suppress(CircuitOpenError):
        cb.call(ok)
    warnings = [r.getMessage() for r in handler.records if r.levelno == logging.WARNING]
    assert warnings == [
        f"circuit {name!r}: CLOSED -> OPEN (1 consecutive failures)",
        f"circuit breaker {name!r} is open: rejecting calls",
        f"1,234 calls rejected by circuit breaker {name!r} in the last 10 s",  # after the first
    ]
    detail = [r for r in handler.records if r.levelno == logging.DEBUG]
    assert len(detail) == 1235  # the per-call detail, at DEBUG
    assert {r.getMessage() for r in detail} == {f"circuit {name!r}: rejected (circuit_open)"}


def test_a_refusal_nobody_reads_builds_no_event(
    log: tuple[_Records, logging.Logger], clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, logger = log
    logger.setLevel(logging.WARNING)
    built: list[events.CallRejected] = []

    class Spy(events.CallRejected):
        def __init__(self, **fields: Any) -> None:
            super().__init__(**fields)
            built.append(self)

    monkeypatch.setattr(events, "CallRejected", Spy)
    cb = CircuitBreaker(fail_max=1, timeout_duration=3600)
    trip(cb, 1)
    for _ in range(50):
        with contextlib.suppress(CircuitOpenError):
            cb.call(ok)
    assert built == []
    heard: list[events.Event] = []
    hook = events.add_hook(heard.append)
    try:
        for _ in range(50):
            with contextlib.suppress(CircuitOpenError):
                cb.call(ok)
    finally:
        events.remove_hook(hook)
    assert len(built) == 50  # hooks (metrics) still see every refusal
    assert sum(isinstance(e, events.CallRejected) for e in heard) == 50


def test_the_refusal_names_the_breaker_and_when_to_retry(clock: FakeClock) -> None:
    name = unique("erp")
    cb = CircuitBreaker(name=name, fail_max=1, timeout_duration=30)
    trip(cb, 1)
    clock.advance(4.25)
    with pytest.raises(CircuitOpenError) as info:
        cb.call(ok)
    error = info.value
    assert (error.name, error.retry_after) == (name, pytest.approx(25.75))
    assert str(error) == f"circuit breaker {name!r} is open; retry after 25.750s"
    assert repr(error) == f"CircuitOpenError({str(error)!r})"
    copy = pickle.loads(pickle.dumps(error))
    assert (type(copy), str(copy), copy.retry_after, copy.name) == (
        CircuitOpenError,
        str(error),
        error.retry_after,
        name,
    )
    assert str(CircuitOpenError("in its own words", retry_after=1.0)) == "in its own words"


def test_a_window_breaker_refuses_while_open(clock: FakeClock) -> None:
    cb = CircuitBreaker(fail_max=100, failure_rate_threshold=0.5, window_size=2, minimum_calls=2)
    trip(cb, 2)
    clock.advance(1)
    with pytest.raises(CircuitOpenError) as info:
        cb.call(ok)
    assert info.value.retry_after == pytest.approx(59)


# --- readings and disposal ------------------------------------------------------------------------


def test_failure_rates_are_published_for_scrapes(clock: FakeClock) -> None:
    name = unique("rate")
    cb = CircuitBreaker(name=name, fail_max=4)
    trip(cb, 1)
    assert dict(events.readings("circuit_failure_rate"))[name] == 0.25
    cb.dispose()
    assert name not in dict(events.readings("circuit_failure_rate"))


def test_a_disposed_breaker_frees_its_name_and_refuses_new_calls(clock: FakeClock) -> None:
    name = unique("disposed")
    cb = CircuitBreaker(name=name, fail_max=1)
    with cb:  # a call in flight when the breaker is disposed finishes quietly
        cb.dispose()
        cb.dispose()  # twice is once
    assert name not in circuit_breakers()
    with pytest.raises(RuntimeError, match=f"circuit breaker '{name}' was disposed"):
        cb.call(ok)
    fresh = CircuitBreaker(name=name, fail_max=7)  # the name is free for another configuration
    assert fresh.call(ok) == "ok"
    assert repr(cb) == f"CircuitBreaker(name='{name}', state='closed')"


@pytest.mark.parametrize(("name", "error"), [(5, TypeError), ("  ", ValueError)])
def test_a_breaker_name_must_be_a_non_empty_string(name: object, error: type[Exception]) -> None:
    with pytest.raises(error, match=f"name must be a non-empty string.*got {name!r}"):
        CircuitBreakerConfig(name=name)  # type: ignore[arg-type]
    with pytest.raises(error, match=f"name must be a non-empty string.*got {name!r}"):
        get_circuit_breaker(name)  # type: ignore[arg-type]
