"""Integration example 1: a calculator agent with full resilience.

The factor API is a local stand-in on 127.0.0.1: it fails once, answers, then goes down. Time is
virtual (``buttress.testing.FakeClock``) so retry waits cost nothing. The seed leaves
``CircuitBreakerConfig``, ``OperationType`` and ``FallbackStrategy`` to imports not shown; here
they are on the import line.
"""

from _standins import ServiceClient, service

from buttress import (
    CircuitBreaker,
    CircuitBreakerConfig,
    DegradationTier,
    FallbackStrategy,
    OperationType,
    degradation_handler,
    fallback,
    get_degradation_manager,
    retry,
    timeout,
)
from buttress.testing import FakeClock

with service(get=[(503, "busy"), (200, 1.85), (500, "down")]) as api, FakeClock() as clock:
    factor_api = ServiceClient(api.url)

    class ResilientCalculatorAgent:
        def __init__(self):
            self.circuit = CircuitBreaker(
                CircuitBreakerConfig(name="factor_api", fail_max=5)
            )

        @retry(max_retries=3, base_delay=1.0)
        @timeout(operation_type=OperationType.EXTERNAL_API)
        @fallback(strategy=FallbackStrategy.CACHED)
        @degradation_handler(min_tier=DegradationTier.TIER_2_CORE)
        def get_emission_factor(self, category: str):
            return self.circuit.call(
                self._fetch_from_api,
                category
            )

        def _fetch_from_api(self, category: str):
            return factor_api.get(category)

    agent = ResilientCalculatorAgent()
    print("steel:", agent.get_emission_factor("steel"), f"({api.hits['/get']} requests, 1 retry)")
    print("API down, cached steel:", agent.get_emission_factor("steel"))
    get_degradation_manager().update_health("factor_api", healthy=False, error="HTTP 500")
    before = api.hits["/get"]
    print("tier", get_degradation_manager().get_current_tier().name, "-> glass:",
          agent.get_emission_factor("glass"), f"({api.hits['/get'] - before} requests)")
