"""The usage examples of the two design documents, as written but for the import line.

The services they call are replaced by small local stand-ins; a fake clock stands in for real time
so backoff and recovery waits cost nothing.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from buttress.testing import FakeClock


class FlakyService:
    """A local stand-in for a remote dependency: fails ``failures`` times, then answers."""

    def __init__(self, failures: int = 0, exc: type[Exception] = ConnectionError) -> None:
        self.failures = failures
        self.exc = exc
        self.calls = 0

    def _answer(self, *args: Any) -> Any:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.exc(f"failure {self.calls}")
        return f"ok:{':'.join(map(str, args))}"

    get = fetch = generate = fetch_all = query = call = _answer


# --- resilience patterns, section 1: retry --------------------------------------------------------


def test_retry_section(clock: FakeClock) -> None:
    from buttress import RetryStrategy, retry

    factor_api = FlakyService(failures=2)

    @retry(max_retries=3, base_delay=1.0, strategy=RetryStrategy.EXPONENTIAL)
    def fetch_emission_factor(category: str):  # type: ignore[no-untyped-def]
        return factor_api.get(category)

    assert fetch_emission_factor("steel") == "ok:steel"
    assert factor_api.calls == 3
    assert len(clock.sleeps) == 2
    assert all(0 <= s <= 2.0 for s in clock.sleeps)  # full jitter below 1 s, 2 s


# --- section 2: timeout ---------------------------------------------------------------------------


def test_timeout_section(clock: FakeClock) -> None:
    from buttress import OperationTimeout, OperationType, timeout

    class FactorDB:
        def query(self, category: str) -> float:
            clock.sleep(1.0)
            return 2.5

    factor_db = FactorDB()

    def long_running_task() -> str:
        clock.sleep(45.0)
        return "done"

    @timeout(operation_type=OperationType.FACTOR_LOOKUP)
    def lookup_factor(category: str):  # type: ignore[no-untyped-def]
        return factor_db.query(category)

    @timeout(timeout_seconds=30.0)
    def custom_timeout_operation():  # type: ignore[no-untyped-def]
        return long_running_task()

    assert lookup_factor("steel") == 2.5
    with pytest.raises(OperationTimeout):
        custom_timeout_operation()
    assert clock.now() == pytest.approx(31.0)


# --- section 3: fallback --------------------------------------------------------------------------


def test_fallback_section() -> None:
    from buttress import FallbackStrategy, fallback

    external_api = FlakyService()
    supplier_api = FlakyService(failures=10)

    @fallback(strategy=FallbackStrategy.CACHED)
    def get_emission_factors(category: str):  # type: ignore[no-untyped-def]
        return external_api.fetch(category)

    @fallback(strategy=FallbackStrategy.DEFAULT, default_value=[])
    def get_suppliers():  # type: ignore[no-untyped-def]
        return supplier_api.fetch_all()

    assert get_emission_factors("steel") == "ok:steel"
    external_api.failures = 100  # the API goes down: the cached answer is served
    assert get_emission_factors("steel") == "ok:steel"
    with pytest.raises(ConnectionError):  # nothing cached for this one: the error propagates
        get_emission_factors("glass")
    assert get_suppliers() == []


# --- section 4: rate limiting ---------------------------------------------------------------------


def test_rate_limiting_section(clock: FakeClock) -> None:
    from buttress import RateLimitConfig, RateLimiter, RateLimitExceeded

    limiter = RateLimiter()
    limiter.configure("factor_api", RateLimitConfig(requests_per_second=10.0, burst_size=20))

    # Check rate limit
    limiter.check_limit("factor_api")

    for _ in range(19):
        limiter.check_limit("factor_api")
    with pytest.raises(RateLimitExceeded) as info:
        limiter.check_limit("factor_api")
    assert info.value.retry_after == pytest.approx(0.1)


# --- section 5: circuit breaker -------------------------------------------------------------------


def test_circuit_breaker_section(clock: FakeClock) -> None:
    from buttress import CircuitBreaker, CircuitBreakerConfig, CircuitOpenError, CircuitState

    external_api = FlakyService(failures=5)
    cb = CircuitBreaker(
        CircuitBreakerConfig(name="seed-external_api", fail_max=5, timeout_duration=60)
    )

    for _ in range(5):
        with pytest.raises(ConnectionError), cb:
            result = external_api.call()
    assert cb.state == CircuitState.OPEN
    with pytest.raises(CircuitOpenError) as info, cb:
        result = external_api.call()
    assert info.value.retry_after == pytest.approx(60)
    assert external_api.calls == 5
    clock.advance(60)
    with cb:
        result = external_api.call()
    assert result == "ok:"
    assert cb.state == CircuitState.CLOSED


# --- resilience patterns, section 6: graceful degradation ----------------------------------------


@pytest.fixture
def process_manager(clock: FakeClock) -> Any:
    """The process-wide degradation manager the examples use, reset around the test."""
    from buttress import get_degradation_manager

    manager = get_degradation_manager()
    manager.reset()
    yield manager
    manager.reset()


def test_graceful_degradation_section(clock: FakeClock, process_manager: Any) -> None:
    from buttress import DegradationTier, degradation_handler, get_degradation_manager

    performed: list[str] = []

    def perform_operation() -> str:
        performed.append("op")
        return "done"

    # Update service health
    manager = get_degradation_manager()
    manager.update_health("factor_api", healthy=True, response_time_ms=150)
    manager.update_health("llm_api", healthy=False, error="Timeout")

    # Check current tier
    tier = manager.get_current_tier()

    # Protect operations
    @degradation_handler(min_tier=DegradationTier.TIER_2_CORE, fallback_value=None)
    def requires_core_functionality():  # type: ignore[no-untyped-def]
        return perform_operation()

    assert tier == DegradationTier.TIER_2_CORE
    assert requires_core_functionality() == "done"
    manager.update_health("database", healthy=False, error="connection refused")
    assert manager.get_current_tier() == DegradationTier.TIER_4_MAINTENANCE
    assert requires_core_functionality() is None
    assert performed == ["op"]
    manager.update_health("database", healthy=True)
    manager.update_health("llm_api", healthy=True)
    assert manager.get_current_tier() == DegradationTier.TIER_4_MAINTENANCE  # dwell first
    clock.advance(manager.min_dwell)
    assert manager.get_current_tier() == DegradationTier.TIER_1_FULL


# --- integration example 1: calculator agent with full resilience --------------------------------


def test_integration_calculator_agent(clock: FakeClock, process_manager: Any) -> None:
    from buttress import (
        CircuitBreaker,
        CircuitBreakerConfig,
        DegradationTier,
        FallbackStrategy,
        OperationType,
        degradation_handler,
        fallback,
        retry,
        timeout,
    )

    api = FlakyService(failures=1)

    class ResilientCalculatorAgent:
        def __init__(self):  # type: ignore[no-untyped-def]
            self.circuit = CircuitBreaker(CircuitBreakerConfig(name="seed-factor_api", fail_max=5))

        @retry(max_retries=3, base_delay=1.0)
        @timeout(operation_type=OperationType.EXTERNAL_API)
        @fallback(strategy=FallbackStrategy.CACHED)
        @degradation_handler(min_tier=DegradationTier.TIER_2_CORE)
        def get_emission_factor(self, category: str):  # type: ignore[no-untyped-def]
            return self.circuit.call(self._fetch_from_api, category)

        def _fetch_from_api(self, category: str) -> str:
            return api.get(category)

    agent = ResilientCalculatorAgent()
    assert agent.get_emission_factor("steel") == "ok:steel"  # one failure, retried
    assert api.calls == 2
    api.failures = 1000  # outage: served from the cache
    assert agent.get_emission_factor("steel") == "ok:steel"
    # a second agent shares the named breaker's state
    assert ResilientCalculatorAgent().circuit.state == agent.circuit.state
    calls = api.calls
    process_manager.update_health("llm_api", healthy=False)  # tier 2: core features still run
    assert agent.get_emission_factor("steel") == "ok:steel"
    assert api.calls > calls
    calls = api.calls
    process_manager.update_health("factor_api", healthy=False)  # tier 3: not even tried
    assert agent.get_emission_factor("glass") is None
    assert api.calls == calls


# --- integration example 2: LLM provider with timeout + fallback ----------------------------------


def test_integration_llm_provider(clock: FakeClock, process_manager: Any) -> None:
    from buttress import (
        DegradationTier,
        FallbackStrategy,
        OperationType,
        degradation_handler,
        fallback,
        retry,
        timeout,
    )

    llm_api = FlakyService()

    @retry(max_retries=2, base_delay=2.0)
    @timeout(operation_type=OperationType.LLM_INFERENCE)
    @fallback(strategy=FallbackStrategy.CACHED)
    @degradation_handler(min_tier=DegradationTier.TIER_1_FULL, fallback_value="[LLM unavailable]")
    def generate_llm_response(prompt: str):  # type: ignore[no-untyped-def]
        return llm_api.generate(prompt)

    assert generate_llm_response("hello") == "ok:hello"
    llm_api.failures = 1000  # the provider goes down: the cached answer is served
    assert generate_llm_response("hello") == "ok:hello"
    with pytest.raises(ConnectionError):  # nothing cached: retried twice, then the error
        generate_llm_response("new prompt")
    assert len(clock.sleeps) == 2
    calls = llm_api.calls
    process_manager.update_health("llm_api", healthy=False, error="Timeout")  # tier 2
    assert generate_llm_response("another") == "[LLM unavailable]"
    assert llm_api.calls == calls


# --- integration example 3: ERP connector with rate limiting -------------------------------------


def test_integration_erp_connector(clock: FakeClock) -> None:
    from buttress import (
        FallbackStrategy,
        OperationType,
        RateLimitConfig,
        fallback,
        get_rate_limiter,
        retry,
        timeout,
    )

    erp_api = FlakyService()

    limiter = get_rate_limiter()
    limiter.configure("erp_api", RateLimitConfig(requests_per_second=5.0, burst_size=10))

    @retry(max_retries=5, base_delay=2.0)
    @timeout(operation_type=OperationType.ERP_API_CALL)
    @fallback(strategy=FallbackStrategy.CACHED)
    def fetch_procurement_data(supplier_id: str):  # type: ignore[no-untyped-def]
        limiter.check_limit("erp_api")
        return erp_api.fetch(supplier_id)

    results = [fetch_procurement_data(f"s{i}") for i in range(12)]
    assert results == [f"ok:s{i}" for i in range(12)]
    # the burst of 10 went through at once; the 11th and 12th waited for the limiter's retry_after
    assert erp_api.calls == 12
    assert clock.now() >= 0.2 - 1e-9


# --- fallback protocols document: circuit breaker and retry ---------------------------------------


def test_circuit_breaker_decorator_async(clock: FakeClock) -> None:
    from buttress import CircuitOpenError, circuit_breaker

    calls = 0

    @circuit_breaker("seed-external_api-async", failure_threshold=5, recovery_timeout=60)
    async def call_external_api(data):  # type: ignore[no-untyped-def]
        nonlocal calls
        calls += 1
        raise ConnectionError("down")

    async def scenario() -> None:
        for _ in range(5):
            with pytest.raises(ConnectionError):
                await call_external_api({"x": 1})
        with pytest.raises(CircuitOpenError):
            await call_external_api({"x": 1})

    asyncio.run(scenario())
    assert calls == 5


def test_retry_with_custom_policy(clock: FakeClock) -> None:
    from buttress import ExponentialBackoff, retry

    db = FlakyService(failures=4)

    @retry(max_attempts=5, strategy=ExponentialBackoff(base_delay=2.0))
    async def flaky_database_operation():  # type: ignore[no-untyped-def]
        # Will retry up to 5 times with exponential backoff
        return db.query("SELECT * FROM users")

    assert asyncio.run(flaky_database_operation()) == "ok:SELECT * FROM users"
    assert db.calls == 5
    assert len(clock.sleeps) == 4


def test_a2a_client_stack(clock: FakeClock) -> None:
    from buttress import circuit_breaker, retry

    sent: list[str] = []

    class A2AClient:
        async def send_task(self, target_team, task_description, context=None):  # type: ignore[no-untyped-def]
            sent.append(target_team)
            if len(sent) == 1:
                raise ConnectionError("first try fails")
            return {"team": target_team, "task": task_description}

    class ResilientA2AClient(A2AClient):
        @retry(max_attempts=3)
        @circuit_breaker("a2a_communication")
        async def send_task(self, target_team, task_description, context=None):  # type: ignore[no-untyped-def]
            return await super().send_task(target_team, task_description, context)

    result = asyncio.run(ResilientA2AClient().send_task("sales", "write copy"))
    assert result == {"team": "sales", "task": "write copy"}
    assert sent == ["sales", "sales"]
