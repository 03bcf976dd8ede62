"""Timeout: budgets, deadline propagation, honest sync abandonment, async cancellation."""

from __future__ import annotations

import asyncio
import signal
import threading
import time

import pytest

from buttress import (
    OperationTimeout,
    OperationType,
    Timeout,
    abandoned_calls,
    deadline,
    remaining,
    retry,
    timeout,
)
from buttress.testing import FakeClock
from conftest import make, run


def test_operation_type_defaults() -> None:
    expected = {
        OperationType.FACTOR_LOOKUP: 5.0,
        OperationType.LLM_INFERENCE: 30.0,
        OperationType.ERP_API_CALL: 10.0,
        OperationType.DATABASE_QUERY: 10.0,
        OperationType.REPORT_GENERATION: 60.0,
        OperationType.EXTERNAL_API: 10.0,
    }
    for op, seconds in expected.items():
        assert Timeout(operation_type=op).seconds == seconds


@pytest.mark.parametrize(
    ("kwargs", "text"),
    [
        ({}, "needs timeout_seconds= or operation_type="),
        ({"timeout_seconds": 1, "operation_type": OperationType.FACTOR_LOOKUP}, "not both"),
        ({"timeout_seconds": 0}, "timeout_seconds must be > 0"),
        ({"timeout_seconds": -3}, "timeout_seconds must be > 0"),
        ({"operation_type": "fast"}, "operation_type must be an OperationType"),
    ],
)
def test_invalid_configuration(kwargs: dict[str, object], text: str) -> None:
    with pytest.raises(ValueError, match=text):
        Timeout(**kwargs)  # type: ignore[arg-type]


def test_fake_clock_timeouts_are_virtual(mode: str, clock: FakeClock) -> None:
    fn = timeout(timeout_seconds=5)(make(mode, lambda: clock.sleep(60)))
    with pytest.raises(OperationTimeout) as info:
        run(fn())
    assert isinstance(info.value, TimeoutError)
    assert info.value.timeout == 5
    assert clock.now() == 5


def test_success_within_budget_returns_the_value(mode: str, clock: FakeClock) -> None:
    def body() -> str:
        clock.sleep(1)
        return "done"

    assert run(timeout(timeout_seconds=5)(make(mode, body))()) == "done"


def test_deadline_is_visible_inside_and_nested_takes_earliest(clock: FakeClock) -> None:
    seen: list[float | None] = []

    @timeout(timeout_seconds=5)
    def outer() -> None:
        inner()

    @timeout(timeout_seconds=30)
    def inner() -> None:
        seen.append(remaining())

    @timeout(timeout_seconds=5)
    async def aouter() -> None:
        await ainner()

    @timeout(timeout_seconds=30)
    async def ainner() -> None:
        seen.append(remaining())

    outer()
    asyncio.run(aouter())
    assert seen == [5.0, 5.0]
    assert remaining() is None


def test_inner_longer_budget_gets_the_outer_timeout(clock: FakeClock) -> None:
    @timeout(timeout_seconds=5)
    def outer() -> None:
        inner()

    @timeout(timeout_seconds=30)
    def inner() -> None:
        clock.sleep(10)

    with pytest.raises(OperationTimeout) as info:
        outer()
    assert clock.now() == 5
    assert info.value.timeout == 5


def test_retry_inside_timeout_stops_within_budget(mode: str, clock: FakeClock) -> None:
    calls = 0

    def body() -> None:
        nonlocal calls
        calls += 1
        raise ConnectionError("down")

    fn = timeout(timeout_seconds=10)(
        retry(max_attempts=100, base_delay=1, jitter=False)(make(mode, body))
    )
    with pytest.raises(ConnectionError):
        run(fn())
    assert clock.now() < 10
    assert calls == 4  # waits 1, 2, 4; the next wait of 8 would pass the deadline


def test_deadline_context_manager(clock: FakeClock) -> None:
    with deadline(3):
        assert remaining() == 3
        with deadline(10):
            assert remaining() == 3
        clock.advance(1)
        assert remaining() == 2

    async def scenario() -> float | None:
        async with deadline(4):
            return remaining()

    assert asyncio.run(scenario()) == 4


def test_expired_deadline_refuses_at_once(clock: FakeClock) -> None:
    called = []
    fn = timeout(timeout_seconds=5)(lambda: called.append(1))
    with deadline(0), pytest.raises(OperationTimeout):
        fn()
    assert called == []


def test_sync_timeout_raises_promptly_and_abandons_the_work() -> None:
    finished = threading.Event()
    release = threading.Event()

    @timeout(timeout_seconds=0.2)
    def slow() -> str:
        release.wait(2.0)
        finished.set()
        return "late"

    before = abandoned_calls()
    start = time.monotonic()
    with pytest.raises(OperationTimeout):
        slow()
    elapsed = time.monotonic() - start
    assert elapsed < 1.0  # not the 2 s the work would take (margin for a stalling machine)
    assert abandoned_calls() == before + 1  # still running in its worker
    release.set()
    assert finished.wait(2.0)
    for _ in range(200):  # the done-callback runs right after the worker finishes
        if abandoned_calls() == before:
            break
        threading.Event().wait(0.01)
    assert abandoned_calls() == before


@pytest.mark.skipif(not hasattr(signal, "pthread_kill"), reason="needs signal.pthread_kill")
def test_a_sync_caller_interrupted_while_waiting_abandons_the_work() -> None:
    started = threading.Event()
    release = threading.Event()
    finished = threading.Event()
    main = threading.get_ident()

    @timeout(timeout_seconds=30)
    def slow() -> str:
        started.set()
        release.wait(10)
        finished.set()
        return "late"

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    def poke() -> None:
        if started.wait(10):
            signal.pthread_kill(main, signal.SIGUSR1)

    before = abandoned_calls()
    previous = signal.signal(signal.SIGUSR1, interrupt)
    poker = threading.Thread(target=poke)
    poker.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            slow()
    finally:
        poker.join(10)
        signal.signal(signal.SIGUSR1, previous)
    # As a timed-out call: counted while it runs on in its worker (a task would be cancelled).
    assert abandoned_calls() == before + 1
    release.set()
    assert finished.wait(10)
    for _ in range(200):  # the done-callback runs right after the worker finishes
        if abandoned_calls() == before:
            break
        threading.Event().wait(0.01)
    assert abandoned_calls() == before


def test_sync_timeout_two_second_sleep_under_point_two() -> None:
    @timeout(timeout_seconds=0.2)
    def sleeper() -> None:
        time.sleep(2)

    start = time.monotonic()
    with pytest.raises(OperationTimeout):
        sleeper()
    assert time.monotonic() - start < 1.0  # not the 2 s sleep (margin for a stalling machine)


def test_sync_worker_sees_the_deadline() -> None:
    @timeout(timeout_seconds=5)
    def inside() -> float | None:
        return remaining()

    left = inside()
    assert left is not None
    assert 4 < left <= 5


def test_sync_errors_and_values_pass_through() -> None:
    @timeout(timeout_seconds=5)
    def fails() -> None:
        raise KeyError("k")

    with pytest.raises(KeyError):
        fails()
    assert timeout(timeout_seconds=5)(lambda x: x * 2)(21) == 42


def test_too_many_abandoned_calls_are_refused() -> None:
    release = threading.Event()
    policy = Timeout(timeout_seconds=0.05, max_abandoned=abandoned_calls() + 1)
    hang = policy(lambda: release.wait(5))
    try:
        with pytest.raises(OperationTimeout):
            hang()
        with pytest.raises(OperationTimeout, match="refused"):
            hang()
    finally:
        release.set()


def test_async_timeout_cancels_the_work() -> None:
    cancelled = []

    @timeout(timeout_seconds=0.05)
    async def slow() -> None:
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    start = time.monotonic()
    with pytest.raises(OperationTimeout):
        asyncio.run(slow())
    assert time.monotonic() - start < 1
    assert cancelled == [True]


def test_async_inner_timeout_error_is_not_ours() -> None:
    @timeout(timeout_seconds=5)
    async def raises_timeout() -> None:
        raise TimeoutError("from the dependency")

    with pytest.raises(TimeoutError) as info:
        asyncio.run(raises_timeout())
    assert not isinstance(info.value, OperationTimeout)


@pytest.mark.parametrize(("name", "error"), [(5, TypeError), ("", ValueError), (" ", ValueError)])
def test_a_name_must_be_a_non_empty_string(name: object, error: type[Exception]) -> None:
    with pytest.raises(error, match=f"name must be a non-empty string.*got {name!r}"):
        Timeout(timeout_seconds=1, name=name)  # type: ignore[arg-type]
