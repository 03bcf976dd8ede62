"""Fallback protocols, "A2A Communication": a retried, breaker-guarded agent-to-agent call.

The other team's A2A endpoint is a local stand-in on 127.0.0.1 that drops the first request.
Time is virtual.
"""

import asyncio

from _standins import AsyncServiceClient, service

from buttress import circuit_breaker, retry
from buttress.testing import FakeClock


class A2AClient:
    """A minimal A2A client: sends a task to a team's endpoint."""

    def __init__(self, url):
        self.http = AsyncServiceClient(url)

    async def send_task(self, target_team, task_description, context=None):
        return await self.http.send_task(target_team, task_description)


with service(send_task=[(502, "bad gateway"), (200, {"status": "accepted"})]) as teams, \
        FakeClock():

    class ResilientA2AClient(A2AClient):
        @retry(max_attempts=3)
        @circuit_breaker("a2a_communication")
        async def send_task(self, target_team, task_description, context=None):
            return await super().send_task(target_team, task_description, context)

    client = ResilientA2AClient(teams.url)
    print("sales team:", asyncio.run(client.send_task("sales", "write launch copy")))
    print("requests:", teams.hits["/send_task"])
