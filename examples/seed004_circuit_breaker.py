"""Resilience patterns, section 5: a circuit breaker around an external API.

The API is a local stand-in on 127.0.0.1 that fails five times, then recovers. Time is virtual,
so the 60 s recovery timeout passes at once.
"""

from _standins import ServiceClient, service

from buttress import CircuitBreaker, CircuitBreakerConfig, CircuitOpenError
from buttress.testing import FakeClock

with service(call=[(500, "down")] * 5 + [(200, "ok")]) as api, FakeClock() as clock:
    external_api = ServiceClient(api.url)

    cb = CircuitBreaker(
        CircuitBreakerConfig(
            name="external_api",
            fail_max=5,
            timeout_duration=60
        )
    )

    for attempt in range(1, 7):
        try:
            with cb:
                result = external_api.call()
        except CircuitOpenError as error:
            print(f"call {attempt}: rejected without calling: {error}")
        except ConnectionError as error:
            print(f"call {attempt}: failed: {error}; breaker {cb.state.name}")
    clock.advance(60)
    with cb:
        result = external_api.call()
    print(f"after 60 s: {result}; breaker {cb.state.name}; API called {api.hits['/call']} times")
