"""What a policy guards: decided by what the call returns; generators refused at decoration."""

from __future__ import annotations

import asyncio
import functools
import gc
import warnings
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest

from buttress import (
    CircuitBreaker,
    CircuitOpenError,
    Fallback,
    FallbackStrategy,
    OperationTimeout,
    Pipeline,
    Retry,
    Timeout,
    fallback,
    retry,
    timeout,
)
from buttress.policies.pipeline import CACHE_SIZE
from buttress.testing import FakeClock


class Flaky:
    """An async operation that fails ``failures`` times, then answers."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0

    async def __call__(self, *args: Any) -> str:
        self.calls += 1
        await asyncio.sleep(0)
        if self.calls <= self.failures:
            raise ConnectionError("down")
        return "ok"


def guarded(awaitable: Awaitable[Any]) -> Any:
    """Run ``awaitable``; a safety net turns a hang (an unguarded wait) into a failure."""

    async def main() -> Any:
        return await asyncio.wait_for(awaitable, 5)

    return asyncio.run(main())


# -- acall: whatever the callable is, what it returns is awaited under the policy -----------------


def test_retry_acall_of_a_lambda_retries() -> None:
    flaky = Flaky(2)
    assert guarded(Retry(max_attempts=3, base_delay=0).acall(lambda: flaky())) == "ok"
    assert flaky.calls == 3


def test_timeout_acall_of_a_lambda_times_out() -> None:
    async def slow() -> None:
        await asyncio.Event().wait()

    with pytest.raises(OperationTimeout):
        guarded(Timeout(timeout_seconds=0.2).acall(lambda: slow()))


def test_timeout_acall_of_a_lambda_times_out_on_a_fake_clock() -> None:
    fake = FakeClock()

    async def slow() -> str:
        await fake.asleep(2)
        return "late"

    with pytest.raises(OperationTimeout):
        asyncio.run(Timeout(timeout_seconds=0.2, clock=fake).acall(lambda: slow()))
    assert fake.now() == pytest.approx(0.2)


def test_fallback_acall_of_a_lambda_falls_back() -> None:
    policy = Fallback(strategy=FallbackStrategy.DEFAULT, default_value="default")
    assert guarded(policy.acall(lambda: Flaky(1)())) == "default"


def test_acall_of_a_partial_and_of_a_plain_function() -> None:
    flaky = Flaky(1)
    assert guarded(Retry(max_attempts=2, base_delay=0).acall(functools.partial(flaky, "x"))) == "ok"
    calls: list[int] = []

    def plain() -> int:
        calls.append(1)
        if len(calls) < 2:
            raise ConnectionError
        return 7

    assert guarded(Retry(max_attempts=2, base_delay=0).acall(plain)) == 7


# -- decorators: async callables that are not `async def` -----------------------------------------


@pytest.mark.parametrize("kind", ["object", "partial", "lambda"])
def test_retry_decorator_retries_async_callables(kind: str) -> None:
    flaky = Flaky(2)
    target: Callable[..., Any] = {
        "object": flaky,
        "partial": functools.partial(flaky, "x"),
        "lambda": lambda: flaky(),
    }[kind]
    assert guarded(retry(max_attempts=3, base_delay=0)(target)()) == "ok"
    assert flaky.calls == 3


@pytest.mark.parametrize("kind", ["object", "lambda"])
def test_timeout_decorator_times_out_async_callables(kind: str) -> None:
    class Slow:
        async def __call__(self) -> None:
            await asyncio.Event().wait()

    slow = Slow()
    target: Callable[..., Any] = slow if kind == "object" else (lambda: slow())
    with pytest.raises(OperationTimeout):
        guarded(timeout(timeout_seconds=0.1)(target)())


@pytest.mark.parametrize("kind", ["object", "lambda"])
def test_fallback_decorator_falls_back_for_async_callables(kind: str) -> None:
    flaky = Flaky(1)
    target: Callable[..., Any] = flaky if kind == "object" else (lambda: flaky())
    policy = fallback(strategy=FallbackStrategy.DEFAULT, default_value="default")
    assert guarded(policy(target)()) == "default"


def test_sync_call_of_a_lambda_returns_a_guarded_awaitable() -> None:
    flaky = Flaky(1)
    pending = Retry(max_attempts=2, base_delay=0).call(lambda: flaky())
    assert guarded(pending) == "ok"
    assert flaky.calls == 2


@pytest.mark.parametrize("decorated", [False, True])
def test_an_awaitable_from_a_retried_sync_attempt_is_awaited_under_the_retry(
    decorated: bool,
) -> None:
    flaky = Flaky(1)  # once started, its first run fails too
    connected: list[bool] = []

    def fetch() -> Awaitable[str]:
        if not connected:  # the first attempt fails before any coroutine is made
            connected.append(True)
            raise ConnectionError("not connected")
        return flaky()

    policy = Retry(max_attempts=3, base_delay=0)
    pending = policy(fetch)() if decorated else policy.call(fetch)
    assert guarded(pending) == "ok"  # the second attempt's coroutine failed and was retried
    assert flaky.calls == 2


def test_a_late_awaitable_from_a_sync_timeout_gets_what_is_left() -> None:
    fake = FakeClock()

    async def slow() -> str:
        await fake.asleep(3)
        return "late"

    def starts_slowly() -> Awaitable[str]:
        fake.advance(1)  # the sync part used a second of the budget
        return slow()

    pending = Timeout(timeout_seconds=2, clock=fake).call(starts_slowly)
    with pytest.raises(OperationTimeout):
        asyncio.run(asyncio.wait_for(pending, 5))  # type: ignore[arg-type]
    assert fake.now() == 2


def test_pipeline_acall_of_a_lambda_runs_every_policy_on_its_async_path() -> None:
    failures = Flaky(100)
    breaker = CircuitBreaker(fail_max=2)
    pipeline = Pipeline(Retry(max_attempts=5, base_delay=0, fail_fast_on=CircuitOpenError), breaker)
    with pytest.raises(CircuitOpenError):
        guarded(pipeline.acall(lambda: failures()))
    assert failures.calls == 2  # the breaker saw both awaited failures and opened


def test_pipeline_decorating_an_async_callable_object_guards_the_awaiting() -> None:
    failures = Flaky(100)
    guarded_call = Pipeline(CircuitBreaker(fail_max=2))(failures)
    for _ in range(2):
        with pytest.raises(ConnectionError):
            guarded(guarded_call())
    with pytest.raises(CircuitOpenError):
        guarded(guarded_call())
    assert failures.calls == 2


def test_pipeline_call_still_refuses_a_coroutine_function() -> None:
    with pytest.raises(TypeError, match="coroutine function"):
        Pipeline(Retry()).call(Flaky(0))


def test_pipeline_cache_is_bounded_and_lets_functions_go() -> None:
    pipeline = Pipeline(Retry(max_attempts=1))
    refs = []
    for i in range(CACHE_SIZE + 100):
        fn = functools.partial(int, i)
        refs.append(weakref.ref(fn))
        assert pipeline.call(fn) == i
        del fn
    gc.collect()
    alive = sum(ref() is not None for ref in refs)
    assert alive <= CACHE_SIZE


# -- refused at decoration ------------------------------------------------------------------------


def numbers() -> Iterator[int]:
    yield 1


async def anumbers() -> AsyncIterator[int]:
    yield 1


@pytest.mark.parametrize(
    "decorate",
    [
        retry,
        retry(max_attempts=2),
        timeout(timeout_seconds=1),
        fallback,
        fallback(strategy=FallbackStrategy.NONE),
        Pipeline(Retry()),
    ],
    ids=["retry", "retry()", "timeout", "fallback", "fallback()", "pipeline"],
)
@pytest.mark.parametrize("generator", [numbers, anumbers], ids=["sync", "async"])
def test_generator_functions_are_refused(decorate: Callable[..., Any], generator: Any) -> None:
    with pytest.raises(TypeError, match=rf"generator function .*{generator.__name__}"):
        decorate(generator)
    with pytest.raises(TypeError, match="generator function"):
        decorate(functools.partial(generator))


def test_an_async_fallback_function_on_a_plain_def_is_refused() -> None:
    async def backup() -> str:
        return "backup"

    with pytest.raises(TypeError, match=r"fallback_function .*backup is async but .*primary"):

        @fallback(strategy=FallbackStrategy.FUNCTION, fallback_function=backup)
        def primary() -> str:
            raise ConnectionError

    @fallback(strategy=FallbackStrategy.FUNCTION, fallback_function=backup)
    async def aprimary() -> str:
        raise ConnectionError

    assert asyncio.run(aprimary()) == "backup"


def test_a_fallback_function_returning_a_coroutine_to_a_plain_call_is_refused() -> None:
    async def backup() -> str:
        return "backup"

    @fallback(strategy=FallbackStrategy.FUNCTION, fallback_function=lambda: backup())
    def primary() -> str:
        raise ConnectionError

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the refused coroutine is closed, never left to warn
        with pytest.raises(TypeError, match="returned an awaitable to the plain call"):
            primary()
        gc.collect()


# -- a coroutine that swallows its cancellation -------------------------------------------------


def test_a_swallowed_cancellation_is_still_a_timeout() -> None:
    @timeout(timeout_seconds=0.05)
    async def stubborn() -> str:
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            return "late"
        return "on time"

    with pytest.raises(OperationTimeout):
        guarded(stubborn())


def test_an_outer_cancellation_is_not_a_timeout() -> None:
    started = asyncio.Event()

    @timeout(timeout_seconds=30)
    async def waits() -> None:
        started.set()
        await asyncio.Event().wait()

    async def main() -> None:
        task = asyncio.create_task(waits())
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
