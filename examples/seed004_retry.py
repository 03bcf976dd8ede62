"""Resilience patterns, section 1: retry with exponential backoff.

The factor API is a local stand-in on 127.0.0.1 that fails twice (HTTP 503) and then answers.
Time is virtual (``buttress.testing.FakeClock``) so the seed's backoff of seconds costs nothing;
the waits taken are printed. Without the ``with FakeClock()`` the example runs in real time.
"""

from _standins import ServiceClient, service

from buttress import RetryStrategy, retry
from buttress.testing import FakeClock

with service(get=[(503, "busy"), (503, "busy"), (200, 2.5)]) as api, FakeClock() as clock:
    factor_api = ServiceClient(api.url)

    @retry(max_retries=3, base_delay=1.0, strategy=RetryStrategy.EXPONENTIAL)
    def fetch_emission_factor(category: str):
        return factor_api.get(category)

    print("emission factor for steel:", fetch_emission_factor("steel"))
    print("requests to the factor API:", api.hits["/get"])
    print("retries:", len(clock.sleeps), "waits (s):", [round(s, 2) for s in clock.sleeps])
