"""Integration example 3: an ERP connector with rate limiting.

The ERP API is a local stand-in on 127.0.0.1. Twelve fetches against a limit of 5/s with bursts of
10: the first ten go at once; the limiter refuses the next ones with ``RateLimitExceeded``, and
the retry waits at least its ``retry_after`` (jitter only adds to it) before trying again.
Time is virtual.
"""

from _standins import ServiceClient, service

from buttress import (
    FallbackStrategy,
    OperationType,
    RateLimitConfig,
    fallback,
    get_rate_limiter,
    retry,
    timeout,
)
from buttress.testing import FakeClock

with service(fetch=[(200, {"spend": 1200})]) as erp, FakeClock() as clock:
    erp_api = ServiceClient(erp.url)

    limiter = get_rate_limiter()
    limiter.configure(
        "erp_api",
        RateLimitConfig(requests_per_second=5.0, burst_size=10)
    )

    @retry(max_retries=5, base_delay=2.0)
    @timeout(operation_type=OperationType.ERP_API_CALL)
    @fallback(strategy=FallbackStrategy.CACHED)
    def fetch_procurement_data(supplier_id: str):
        limiter.check_limit("erp_api")
        return erp_api.fetch(supplier_id)

    results = [fetch_procurement_data(f"supplier-{i}") for i in range(12)]
    print(f"fetched {len(results)} suppliers with {erp.hits['/fetch']} ERP requests")
    print(f"rate-limit waits: {len(clock.sleeps)}, virtual seconds: {clock.now():.1f}")
