"""One run of every buttress policy taking every kind of decision, for the instrumentation tests.

``exercise(tag)`` drives real policies on the fake clock the caller installed: a breaker that
succeeds, fails, trips, rejects, recovers through half-open; a retry that retries and gives up; a
timeout; fallbacks; a rate-limit refusal; a full bulkhead; an adaptive limit; a degradation
manager changing tier; a resource manager and a health monitor publishing their readings; and,
once buttress has them, a fallback protocol's steps. Every name carries ``tag`` so runs never
share state. It returns the objects that publish readings, to be kept alive while the metrics are
read (readings of collected objects vanish).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import buttress
from buttress import (
    AdaptiveConcurrency,
    Bulkhead,
    BulkheadFull,
    CircuitBreaker,
    CircuitOpenError,
    DegradationManager,
    Fallback,
    FallbackStrategy,
    HealthMonitor,
    RateLimit,
    RateLimitConfig,
    RateLimiter,
    RateLimitExceeded,
    ResilienceManager,
    ResourceManager,
    Retry,
    Timeout,
)
from buttress.queue import RequestQueue
from buttress.testing import FakeClock


def _fail() -> None:
    raise ConnectionError("down")


def exercise(tag: str, clock: FakeClock) -> list[Any]:
    keep: list[Any] = []
    breaker = CircuitBreaker(name=f"{tag}-erp", fail_max=2, timeout_duration=10)
    keep.append(breaker)
    assert breaker.call(lambda: 1) == 1
    for _ in range(2):
        with pytest.raises(ConnectionError):
            breaker.call(_fail)
    for _ in range(3):
        with pytest.raises(CircuitOpenError):
            breaker.call(lambda: 1)
    clock.advance(10)
    assert breaker.call(lambda: 2) == 2  # the half-open probe closes it again

    with pytest.raises(ConnectionError):
        Retry(max_attempts=3, base_delay=1, name=f"{tag}-retry").call(_fail)
    attempts = iter([ConnectionError("once"), None])

    def flaky() -> str:
        error = next(attempts)
        if error is not None:
            raise error
        return "ok"

    assert Retry(max_attempts=3, base_delay=1, name=f"{tag}-retry").call(flaky) == "ok"

    with pytest.raises(TimeoutError):
        Timeout(timeout_seconds=1, name=f"{tag}-timeout").call(lambda: clock.sleep(5))

    assert Fallback(strategy=FallbackStrategy.NONE, name=f"{tag}-fallback").call(_fail) is None
    default = Fallback(strategy=FallbackStrategy.DEFAULT, default_value=0, name=f"{tag}-default")
    assert default.call(_fail) == 0

    limiter = RateLimiter()
    limiter.configure(f"{tag}-api", RateLimitConfig(requests_per_second=1.0, burst_size=1))
    limited = RateLimit(f"{tag}-api", limiter=limiter)
    assert limited.call(lambda: 1) == 1
    with pytest.raises(RateLimitExceeded):
        limited.call(lambda: 1)

    bulkhead = Bulkhead(max_concurrent=1, name=f"{tag}-bulkhead")
    with pytest.raises(BulkheadFull):
        bulkhead.call(lambda: bulkhead.call(lambda: 1))  # the inner call finds the slot taken

    adaptive = AdaptiveConcurrency(initial_limit=4, name=f"{tag}-adaptive")
    keep.append(adaptive)
    assert adaptive.call(lambda: 1) == 1

    degradation = DegradationManager(name=f"{tag}-team")
    keep.append(degradation)
    degradation.update_health("llm_api", healthy=False, error="Timeout")
    degradation.get_current_tier()

    resources = ResourceManager(name=f"{tag}-team")
    keep.append(resources)
    resources.register("memory", "heap", lambda: 85.5, horizon=None)
    quota = iter(range(10, 100, 5))  # a steady climb: exhaustion gets predicted
    resources.register("api_quota", "openai", lambda: float(next(quota)))

    async def check(times: int) -> None:
        for _ in range(times):
            await resources.check_now()
            clock.advance(30)

    asyncio.run(check(9))

    components = HealthMonitor(name=f"{tag}-team")
    keep.append(components)
    components.register("llm")
    components.record_success("llm")
    components.record_failure("llm", "boom")

    if hasattr(buttress, "with_fallback"):  # the fallback protocols: one failure, then a retry
        answers = iter([ConnectionError("429"), "ok"])

        class Team:
            def __init__(self) -> None:
                self.resilience = ResilienceManager(f"{tag}-protocol")

            @buttress.with_fallback("api_quota")
            def generate(self) -> object:
                answer = next(answers)
                if isinstance(answer, Exception):
                    raise answer
                return answer

        team = Team()
        keep.append(team)
        assert team.generate() == "ok"

    queue = RequestQueue(f"{tag}-mail", storage="memory://", max_attempts=1, clock=clock)
    keep.append(queue)

    @queue.handler
    def send(to: str) -> None:
        if to == "nobody":
            raise LookupError(to)

    for to in ("ann", "nobody", "bob"):
        queue.put("send", [to])
    assert queue.process() == 3  # two handled, one to the dead letters
    queue.put("send", ["cy"])  # one waiting
    return keep
