"""Resilience patterns, section 6: graceful degradation tiers.

Health comes from a probe of local stand-in services on 127.0.0.1 (the LLM API times out).
"""

from _standins import ServiceClient, ServiceError, service

from buttress import DegradationTier, degradation_handler, get_degradation_manager

with service(factor_api=[(200, "ok")], llm_api=[(504, "Timeout")]) as services:
    client = ServiceClient(services.url)
    client.factor_api()
    try:
        client.llm_api()
    except ServiceError as error:
        llm_error = str(error)

    def perform_operation():
        return "calculated"

    # Update service health
    manager = get_degradation_manager()
    manager.update_health("factor_api", healthy=True, response_time_ms=150)
    manager.update_health("llm_api", healthy=False, error="Timeout")

    # Check current tier
    tier = manager.get_current_tier()

    # Protect operations
    @degradation_handler(
        min_tier=DegradationTier.TIER_2_CORE,
        fallback_value=None
    )
    def requires_core_functionality():
        return perform_operation()

    print("llm_api probe:", llm_error)
    print("tier:", tier.name)
    print("core operation:", requires_core_functionality())
    manager.update_health("database", healthy=False, error="connection refused")
    print("database down, tier:", manager.get_current_tier().name)
    print("core operation:", requires_core_functionality())
