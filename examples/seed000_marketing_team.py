"""Fallback protocols, "Basic Team Integration": a team's LLM call under its API-quota protocol.

The LLM is a local stand-in on 127.0.0.1 speaking for OpenAI: it answers the first request with
429 and ``Retry-After: 0`` (quota exhausted for the moment), then answers. The API_QUOTA protocol's
first step, a retry, honours the wait and gets the answer. The quota monitor reads the same
stand-in.
"""
# requires: buttress.with_fallback

import asyncio

from _standins import AsyncServiceClient, ServiceClient, service

from buttress import ResilienceManager
from buttress import with_fallback, ResourceType


class LLM:
    """A stand-in LLM client: ``invoke`` posts the prompt to the provider."""

    def __init__(self, url):
        self.http = AsyncServiceClient(url)

    async def invoke(self, prompt):
        return await self.http.invoke(prompt)


class MarketingTeam:
    def __init__(self, url):
        self.resilience = ResilienceManager("marketing-team")
        self.llm = LLM(url)
        self.quota_api = ServiceClient(url)

    async def start(self):
        # Start resilience monitoring
        await self.resilience.start()

        # Register custom monitors
        self.resilience.register_api_quota_monitor(
            "openai",
            self.check_openai_quota
        )

    def check_openai_quota(self):
        figures = self.quota_api.quota()
        return figures["used"], figures["limit"]

    @with_fallback(ResourceType.API_QUOTA)
    async def generate_content(self, prompt: str):
        # Automatically handles API quota failures
        return await self.llm.invoke(prompt)


async def main(url):
    team = MarketingTeam(url)
    await team.start()
    try:
        print("content:", await team.generate_content("a tagline for solar panels"))
    finally:
        await team.resilience.stop()


with service(
    invoke=[(429, {"error": "quota"}, {"Retry-After": "0"}), (200, "Power your day with the sun.")],
    quota=[(200, {"used": 120, "limit": 200})],
) as openai:
    asyncio.run(main(openai.url))
    print("requests to the provider:", openai.hits["/invoke"])
