"""Time that cannot be mixed: real clocks, deadlines that carry their clock, fake clocks."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from typing import Any

import pytest

from buttress import (
    AdaptiveConcurrency,
    CircuitBreaker,
    DegradationManager,
    Fallback,
    OperationTimeout,
    OperationType,
    RateLimiter,
    Retry,
    SystemClock,
    Timeout,
    abandoned_calls,
    deadline,
    remaining,
    retry,
    timeout,
)
from buttress._deadline import current_deadline
from buttress.clock import Clock, get_clock, is_real, set_clock
from buttress.policies.timeout import DEFAULT_TIMEOUTS
from buttress.testing import FakeClock
from conftest import make, run


class LegacyClock:
    """A user clock written before clocks said whether they are real."""

    def __init__(self) -> None:
        self.time = 0.0

    def now(self) -> float:
        return self.time

    def wall(self) -> float:
        return 1_000_000.0 + self.time

    def sleep(self, seconds: float) -> None:
        self.time += seconds

    async def asleep(self, seconds: float) -> None:
        self.time += seconds


def test_whether_a_clock_is_real_is_a_property_of_the_clock() -> None:
    assert SystemClock().real is True
    assert FakeClock().real is False
    assert is_real(SystemClock())
    assert not is_real(FakeClock())
    assert not is_real(LegacyClock())  # no `real`: virtual
    assert isinstance(SystemClock(), Clock)


def test_set_clock_accepts_a_legacy_clock_as_virtual_and_names_what_is_missing() -> None:
    legacy = LegacyClock()
    previous = set_clock(legacy)  # type: ignore[arg-type]
    try:
        assert get_clock() is legacy
        calls: list[float | None] = []
        # Virtual: the call runs inline (no worker thread) and sees its deadline on this clock.
        fn = timeout(timeout_seconds=5)(lambda: calls.append(remaining()))
        fn()
        assert calls == [5.0]
    finally:
        set_clock(previous)

    class Half:
        def now(self) -> float:
            return 0.0

    with pytest.raises(TypeError, match="lacks wall, sleep, asleep"):
        set_clock(Half())  # type: ignore[arg-type]


def _builders() -> dict[str, Callable[[Any], object]]:
    from buttress.protocol.engine import ProtocolHost
    from buttress.protocol.targets import TargetPool

    return {
        "RateLimiter": lambda clock: RateLimiter(clock=clock),
        "CircuitBreaker": lambda clock: CircuitBreaker(clock=clock),
        "Timeout": lambda clock: Timeout(timeout_seconds=1, clock=clock),
        "deadline": lambda clock: deadline(1, clock=clock),
        "Retry": lambda clock: Retry(clock=clock),
        "Fallback": lambda clock: Fallback(clock=clock),
        "AdaptiveConcurrency": lambda clock: AdaptiveConcurrency(clock=clock),
        "DegradationManager": lambda clock: DegradationManager(clock=clock),
        "ProtocolHost": lambda clock: ProtocolHost("team", clock=clock),
        "TargetPool": lambda clock: TargetPool("pool", {"a": lambda: None}, clock=clock),
    }


@pytest.mark.parametrize("policy", sorted(_builders()))
def test_every_clock_argument_is_checked_where_it_is_given(policy: str) -> None:
    build = _builders()[policy]
    with pytest.raises(TypeError, match=r"clock must provide now\(\), wall\(\), sleep\(\)") as e:
        build(5)
    assert "5 lacks now, wall, sleep, asleep" in str(e.value)
    build(LegacyClock())  # a clock without `real` is accepted (as virtual)
    build(None)


def test_a_second_system_clock_enforces_a_sync_budget() -> None:
    release, finished = threading.Event(), threading.Event()

    def slow() -> None:
        release.wait(5)
        finished.set()

    before = abandoned_calls()
    try:
        with pytest.raises(OperationTimeout):
            Timeout(timeout_seconds=0.05, clock=SystemClock()).call(slow)
        assert not finished.is_set()  # the caller got control back; the work was abandoned
        assert abandoned_calls() == before + 1
    finally:
        release.set()
    assert finished.wait(5)


def test_a_second_system_clock_enforces_an_async_budget() -> None:
    cancelled: list[bool] = []

    async def slow() -> None:
        try:
            await asyncio.sleep(2)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    with pytest.raises(OperationTimeout):
        asyncio.run(Timeout(timeout_seconds=0.05, clock=SystemClock()).acall(slow))
    assert cancelled == [True]


class TwoFailures:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.calls < 3:
            raise ConnectionError("down")
        return "ok"


def test_a_retry_on_the_default_clock_ignores_a_fake_clock_deadline(mode: str) -> None:
    flaky = TwoFailures()
    guarded = Timeout(timeout_seconds=10, clock=FakeClock())(
        retry(max_attempts=3, base_delay=0)(make(mode, flaky))
    )
    assert run(guarded()) == "ok"
    assert flaky.calls == 3


def test_a_retry_on_a_fake_clock_ignores_a_real_deadline(mode: str) -> None:
    fake, flaky = FakeClock(), TwoFailures()
    guarded = timeout(timeout_seconds=30)(
        retry(max_attempts=3, base_delay=10, jitter=False, clock=fake)(make(mode, flaky))
    )
    assert run(guarded()) == "ok"  # 30 fake seconds of waiting, in no real time
    assert fake.sleeps == [10, 20]


def test_remaining_measures_on_the_deadline_clock() -> None:
    fake = FakeClock()
    seen: list[float | None] = []

    @timeout(timeout_seconds=5, clock=fake)
    def inside() -> None:
        seen.append(remaining())
        fake.advance(2)
        seen.append(remaining())

    inside()  # the default clock is the real one; the deadline is on the fake
    assert seen == [5.0, 3.0]
    assert current_deadline() is None


def test_a_fake_clock_stops_only_at_deadlines_on_itself() -> None:
    mine, other = FakeClock(), FakeClock()

    @timeout(timeout_seconds=5, clock=other)
    def sleeps_on_mine() -> None:
        mine.sleep(100)

    sleeps_on_mine()
    assert mine.now() == 100

    @timeout(timeout_seconds=5, clock=mine)
    def sleeps_on_mine_again() -> None:
        mine.sleep(100)

    with pytest.raises(OperationTimeout):
        sleeps_on_mine_again()
    assert mine.now() == 105


def test_a_deadline_survives_a_nested_one_on_another_scale() -> None:
    fake = FakeClock()
    seen: list[float | None] = []

    @timeout(timeout_seconds=5, clock=fake)
    def outer() -> None:
        inner()

    @timeout(timeout_seconds=30)  # real: its own worker and scale
    def inner() -> None:
        left = remaining()
        seen.append(left)
        fake.sleep(10)  # the fake deadline is still in force, behind the real one

    with pytest.raises(OperationTimeout):
        outer()
    assert fake.now() == 5
    assert seen[0] is not None
    assert seen[0] <= 30  # measured on the real clock


def test_real_clocks_share_one_scale_and_nest_to_the_earliest() -> None:
    seen: list[float | None] = []

    @Timeout(timeout_seconds=30, clock=SystemClock())
    def inner() -> None:
        seen.append(remaining())

    with deadline(3):  # on the default clock, a different SystemClock object
        inner()
    assert seen[0] is not None
    assert seen[0] <= 3


def test_nested_fake_deadlines_keep_the_earliest(clock: FakeClock) -> None:
    with deadline(3), deadline(10):
        assert remaining() == 3
        with pytest.raises(OperationTimeout):
            clock.sleep(5)
    assert clock.now() == 3


def test_time_outs_warn_once_then_once_per_interval(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    guarded = Timeout(timeout_seconds=1, name="erp")(lambda: clock.sleep(5))
    with caplog.at_level(logging.DEBUG, logger="buttress"):
        for _ in range(20):  # 20 time-outs, one per fake second
            with pytest.raises(OperationTimeout):
                guarded()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        "timeout 'erp': timed out after 1.000s",
        "10 calls to 'erp' timed out in the last 10 s",
    ]
    details = [r for r in caplog.records if getattr(r, "event", None) == "timed_out"]
    assert len(details) == 20
    assert {r.levelno for r in details} == {logging.DEBUG}


def test_default_timeouts_are_read_only() -> None:
    assert DEFAULT_TIMEOUTS[OperationType.LLM_INFERENCE] == 30.0
    assert dict(DEFAULT_TIMEOUTS)[OperationType.FACTOR_LOOKUP] == 5.0
    with pytest.raises(TypeError):
        DEFAULT_TIMEOUTS[OperationType.LLM_INFERENCE] = 1.0  # type: ignore[index]
    assert OperationType.LLM_INFERENCE.default_timeout == 30.0


def test_policy_objects_call_without_decorating_per_call(
    monkeypatch: pytest.MonkeyPatch, clock: FakeClock
) -> None:
    from buttress import Fallback, FallbackStrategy

    policies = [
        Retry(max_attempts=2, base_delay=0),
        Timeout(timeout_seconds=5),
        Fallback(strategy=FallbackStrategy.DEFAULT, default_value=0),
    ]

    def refuse(self: object, fn: object) -> object:
        raise AssertionError("decorated per call")

    for policy in policies:
        monkeypatch.setattr(type(policy), "__call__", refuse)
        assert policy.call(lambda x: x + 1, 1) == 2  # type: ignore[attr-defined]

        async def add(x: int) -> int:
            return x + 1

        assert asyncio.run(policy.acall(add, 1)) == 2  # type: ignore[attr-defined]


def test_repeated_warnings_keep_real_entries_and_drop_virtual_ones_past_the_limit() -> None:
    from buttress._callables import RepeatedWarnings

    warnings = RepeatedWarnings("retry", "calls to {name!r} failed")
    real = SystemClock()
    warnings.hit("site", lambda: "op", real, True, 0.0, lambda: "first")
    for _ in range(RepeatedWarnings.LIMIT + 10):
        warnings.hit("site", lambda: "op", FakeClock(), False, 0.0, lambda: "first")
    assert len(warnings._table) <= RepeatedWarnings.LIMIT
    assert ("site", None) in warnings._table  # the real clock's entry stays
