"""Fallback protocols, "Full Resilience Stack": ``with_resilience`` around one request.

``_process_impl`` calls a local stand-in on 127.0.0.1 that fails once with HTTP 503; the stack
(breaker, retry, rate limit, timeout and the API_QUOTA protocol) answers with the second try.
Retries wait ``RETRY_BASE_DELAY`` seconds, here set to 0.05 through the environment.
"""
# requires: buttress.ResilienceManager.with_resilience

import asyncio
import os

from _standins import AsyncServiceClient, service

from buttress import ResilienceManager, ResourceType

os.environ["RETRY_BASE_DELAY"] = "0.05"


class RequestProcessor:
    def __init__(self, url):
        self.resilience = ResilienceManager("processing-team")
        self.api = AsyncServiceClient(url)

    async def _process_impl(self, request_data):
        return await self.api.process(request_data["id"])

    async def process_request(self, request_data):
        # Execute with full resilience protection
        return await self.resilience.with_resilience(
            self._process_impl,
            ResourceType.API_QUOTA,
            request_data
        )


with service(process=[(503, "busy"), (200, {"status": "processed"})]) as api:
    processor = RequestProcessor(api.url)
    print("result:", asyncio.run(processor.process_request({"id": 42})))
    print("requests:", api.hits["/process"])
