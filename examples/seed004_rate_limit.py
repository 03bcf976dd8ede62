"""Resilience patterns, section 4: a token bucket of 10 requests/s with bursts of 20."""

from buttress import RateLimitConfig, RateLimiter, RateLimitExceeded
from buttress.testing import FakeClock

with FakeClock() as clock:
    limiter = RateLimiter()
    limiter.configure(
        "factor_api",
        RateLimitConfig(requests_per_second=10.0, burst_size=20)
    )

    # Check rate limit
    limiter.check_limit("factor_api")

    admitted = 1
    try:
        while True:
            limiter.check_limit("factor_api")
            admitted += 1
    except RateLimitExceeded as error:
        print(f"admitted {admitted} at once, then refused: {error}")
        wait = error.retry_after
    clock.advance(wait)
    limiter.check_limit("factor_api")
    print("admitted again after waiting retry_after")
