"""Fallback protocols, "Basic Team Integration": a team's LLM calls under its API-quota protocol.

Three local stand-ins on 127.0.0.1 play the providers: "OpenAI" answers 429 with
``Retry-After: 60`` (quota spent), "Anthropic" answers 500, the local model answers. The team
names them as the targets of its API quota, in order; the LLM client calls the provider the
running call was switched to (``buttress.current_target()``). The first call switches through
them at once (no retry backoff is slept while an untried provider remains); later calls go
straight to the local model while the others cool down. The quota monitor reads OpenAI's figures
from the same stand-in.
"""
# requires: buttress.with_fallback, buttress.current_target

import asyncio

from _standins import AsyncServiceClient, ServiceClient, service

import buttress
from buttress import ResilienceManager, ResourceType, with_fallback


class LLM:
    """A stand-in chat client: ``invoke`` sends the prompt to the current provider."""

    def __init__(self, urls):
        self.providers = {name: AsyncServiceClient(url) for name, url in urls.items()}

    async def invoke(self, prompt):
        provider = buttress.current_target() or "openai"
        return await self.providers[provider].chat(prompt)


class MarketingTeam:
    def __init__(self, urls):
        self.resilience = ResilienceManager("marketing-team")
        self.llm = LLM(urls)
        self.quota_api = ServiceClient(urls["openai"])
        self.resilience.register_targets(ResourceType.API_QUOTA, list(urls))

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


async def main(urls):
    team = MarketingTeam(urls)
    await team.start()
    try:
        for n in range(3):
            prompt = f"a tagline for solar panels, take {n}"
            print(f"post {n}:", await team.generate_content(prompt))
        states = team.resilience.provider_states()["api_quota"]
        for name, state in states.items():
            print(f"provider {name}: {state['state']}", state.get("last_error") or "")
    finally:
        await team.resilience.stop()


with service(chat=[(429, {"error": "quota"}, {"Retry-After": "60"})],
             quota=[(200, {"used": 200, "limit": 200})]) as openai, \
        service(chat=[(500, {"error": "internal"})]) as anthropic, \
        service(chat=[(200, "Power your day with the sun.")]) as local:
    asyncio.run(main({"openai": openai.url, "anthropic": anthropic.url, "local": local.url}))
    print("requests:", {"openai": openai.hits["/chat"], "anthropic": anthropic.hits["/chat"],
                        "local": local.hits["/chat"]})
