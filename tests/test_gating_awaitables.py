"""Gating policies (breaker, bulkhead, adaptive limit, rate limit) never hand back unguarded work.

A plain callable that returns an awaitable, or an object with ``async def __call__``, or a
generator function: the policy either guards the real work or refuses clearly.
"""

from __future__ import annotations

import asyncio
import functools
import uuid
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from buttress import (
    Bulkhead,
    CircuitBreaker,
    CircuitState,
    RateLimitConfig,
    RateLimiter,
    events,
    rate_limit,
)
from buttress.machines.limit import AIMD, LimitChange
from buttress.policies.adaptive import AdaptiveConcurrency
from buttress.testing import FakeClock


def _breaker() -> CircuitBreaker:
    return CircuitBreaker(name=f"gate-{uuid.uuid4().hex[:8]}", fail_max=1)


def _limit() -> Callable[[Any], Any]:
    limiter = RateLimiter()
    limiter.configure("gate", RateLimitConfig(requests_per_second=1000.0, burst_size=1000))
    return rate_limit("gate", limiter=limiter)


POLICIES: dict[str, Callable[[], Any]] = {
    "breaker": _breaker,
    "bulkhead": lambda: Bulkhead(max_concurrent=1),
    "adaptive": lambda: AdaptiveConcurrency(),
    "rate_limit": _limit,
}


@pytest.fixture(params=sorted(POLICIES))
def policy(request: pytest.FixtureRequest) -> Any:
    return POLICIES[request.param]()


async def _fails() -> None:
    raise ConnectionError("down")


def test_a_generator_function_is_refused_at_decoration(policy: Any) -> None:
    def numbers() -> Iterator[int]:
        yield 1

    async def anumbers() -> Any:
        yield 1

    for fn in (numbers, anumbers):
        with pytest.raises(TypeError, match="generator function"):
            policy(fn)


def test_an_async_callable_object_is_guarded_as_async(policy: Any) -> None:
    class Client:
        async def __call__(self) -> str:
            return "ok"

    guarded = policy(Client())
    assert asyncio.run(guarded()) == "ok"  # awaited inside the async wrapper


def test_a_partial_of_an_async_function_is_guarded_as_async(policy: Any) -> None:
    async def fetch(x: int) -> int:
        return x

    guarded = policy(functools.partial(fetch, 3))
    assert asyncio.run(guarded()) == 3


@pytest.mark.parametrize("name", ["breaker", "bulkhead", "adaptive"])
def test_a_plain_callable_returning_a_coroutine_is_refused_not_handed_back(name: str) -> None:
    policy = POLICIES[name]()
    guarded = policy(lambda: _fails())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the coroutine is closed: no "never awaited" warning
        with pytest.raises(TypeError, match="returned an awaitable"):
            guarded()


def test_the_refused_coroutine_does_not_count_for_the_breaker() -> None:
    breaker = _breaker()
    guarded = breaker(lambda: _fails())
    for _ in range(3):
        with pytest.raises(TypeError):
            guarded()
    assert breaker.state is CircuitState.CLOSED
    assert asyncio.run(_acall_fails(breaker))


async def _acall_fails(breaker: CircuitBreaker) -> bool:
    with pytest.raises(ConnectionError):
        await breaker.acall(lambda: _fails())  # acall awaits it under the breaker: it counts
    return breaker.state is CircuitState.OPEN


def test_a_refused_coroutine_does_not_settle_a_probe(clock: FakeClock) -> None:
    breaker = CircuitBreaker(
        name=f"gate-{uuid.uuid4().hex[:8]}", fail_max=1, recovery_timeout=10, clock=clock
    )
    breaker.open()
    clock.advance(10)
    guarded = breaker(lambda: _fails())
    with pytest.raises(TypeError, match="returned an awaitable"):
        guarded()
    assert breaker.state is CircuitState.HALF_OPEN  # the probe was neither a success nor a failure
    assert asyncio.run(_acall_fails(breaker))  # and its slot was given back to the next probe


def test_a_refused_coroutine_is_no_completed_call_for_hooks() -> None:
    breaker = _breaker()
    seen: list[events.Event] = []
    hook = events.add_hook(seen.append)
    try:
        with pytest.raises(TypeError, match="returned an awaitable"):
            breaker(lambda: _fails())()
    finally:
        events.remove_hook(hook)
    assert [e for e in seen if isinstance(e, events.CallCompleted)] == []
    assert breaker.state is CircuitState.CLOSED


def _five() -> int:
    return 5


@pytest.mark.parametrize("hooked", [False, True])
def test_acall_of_a_plain_function_returns_its_value_as_call_does(
    policy: Any, hooked: bool
) -> None:
    hook = events.add_hook(lambda event: None) if hooked else None
    try:
        assert policy.call(_five) == 5
        assert asyncio.run(policy.acall(_five)) == 5  # not a TypeError from awaiting an int
        assert asyncio.run(policy.acall(_five)) == 5
    finally:
        if hook is not None:
            events.remove_hook(hook)
    if isinstance(policy, CircuitBreaker):
        assert policy.state is CircuitState.CLOSED  # nor a failure counted against the dependency


@pytest.mark.parametrize("hooked", [False, True])
@pytest.mark.parametrize("name", ["breaker", "bulkhead", "adaptive"])
def test_call_of_a_plain_callable_returning_a_coroutine_is_refused_as_decorating_it_is(
    name: str, hooked: bool
) -> None:
    policy = POLICIES[name]()
    hook = events.add_hook(lambda event: None) if hooked else None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # the coroutine is closed: no "never awaited" warning
            for _ in range(3):
                with pytest.raises(TypeError, match="returned an awaitable"):
                    policy.call(lambda: _fails())
    finally:
        if hook is not None:
            events.remove_hook(hook)
    if isinstance(policy, CircuitBreaker):
        assert policy.state is CircuitState.CLOSED
    else:
        assert policy.active == 0


class _Recording(AIMD):
    """AIMD that counts the samples it is given."""

    def __init__(self) -> None:
        super().__init__(initial_limit=5)
        self.samples = 0

    def sample(
        self, now: float, rtt: float, inflight: int, dropped: bool = False
    ) -> LimitChange | None:
        self.samples += 1
        return super().sample(now, rtt, inflight, dropped)


def test_a_refused_coroutine_is_no_measurement_of_an_adaptive_limit() -> None:
    algorithm = _Recording()
    limit = AdaptiveConcurrency(algorithm)
    decorated = limit(lambda: _fails())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(TypeError, match="returned an awaitable"):
            decorated()
        with pytest.raises(TypeError, match="returned an awaitable"):
            limit.call(lambda: _fails())
    assert algorithm.samples == 0  # no round trip was measured: the work never ran
    assert limit.active == 0
    assert limit.call(_five) == 5
    assert algorithm.samples == 1
