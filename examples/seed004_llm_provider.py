"""Integration example 2: an LLM provider with timeout and fallback.

The LLM API is a local stand-in on 127.0.0.1 that answers once and then fails. Time is virtual.
"""

from _standins import ServiceClient, service

from buttress import (
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

with service(generate=[(200, "Scope 3 covers the value chain."), (500, "overloaded")]) as llm, \
        FakeClock() as clock:
    llm_api = ServiceClient(llm.url)

    @retry(max_retries=2, base_delay=2.0)
    @timeout(operation_type=OperationType.LLM_INFERENCE)
    @fallback(strategy=FallbackStrategy.CACHED)
    @degradation_handler(
        min_tier=DegradationTier.TIER_1_FULL,
        fallback_value="[LLM unavailable]"
    )
    def generate_llm_response(prompt: str):
        return llm_api.generate(prompt)

    print("answer:", generate_llm_response("scope3"))
    print("provider failing, cached:", generate_llm_response("scope3"))
    try:
        generate_llm_response("new")
    except ConnectionError as error:
        print(f"nothing cached: {error} after {len(clock.sleeps)} retries")
    get_degradation_manager().update_health("llm_api", healthy=False, error="Timeout")
    print("tier", get_degradation_manager().get_current_tier().name, "->",
          generate_llm_response("another"))
