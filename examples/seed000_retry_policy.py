"""Fallback protocols, "Retry with Custom Policy": five attempts with exponential backoff.

``db`` is a local stand-in on 127.0.0.1 that refuses four times (HTTP 503) and then answers.
Time is virtual, so the backoff (2, 4, 8, 16 s before jitter) costs nothing.
"""

import asyncio

from _standins import AsyncServiceClient, service

from buttress import ExponentialBackoff, retry
from buttress.testing import FakeClock

with service(execute=[(503, "starting")] * 4 + [(200, [{"id": 1, "name": "ada"}])]) as database, \
        FakeClock() as clock:
    db = AsyncServiceClient(database.url)

    @retry(max_attempts=5, strategy=ExponentialBackoff(base_delay=2.0))
    async def flaky_database_operation():
        # Will retry up to 5 times with exponential backoff
        return await db.execute("SELECT * FROM users")

    print("users:", asyncio.run(flaky_database_operation()))
    print("attempts:", database.hits["/execute"], "waits:", len(clock.sleeps))
