"""Fallback protocols, "Using Circuit Breaker": an aiohttp call guarded by a named breaker.

``https://api.example.com`` is replaced by a local stand-in on 127.0.0.1 that is down; after five
failures the breaker opens and the sixth call is refused without a request. Time is virtual.
"""

import asyncio

import aiohttp
from _standins import service

from buttress import CircuitOpenError, circuit_breaker
from buttress.testing import FakeClock

with service(submit=[(503, {"error": "unavailable"})]) as api, FakeClock():
    API_URL = f"{api.url}/submit"  # the seed's https://api.example.com

    @circuit_breaker("external_api", failure_threshold=5, recovery_timeout=60)
    async def call_external_api(data):
        async with aiohttp.ClientSession() as session:  # noqa: SIM117 (the seed's code)
            async with session.post(API_URL, json=data) as resp:
                resp.raise_for_status()
                return await resp.json()

    async def main():
        for n in range(1, 7):
            try:
                await call_external_api({"n": n})
            except aiohttp.ClientResponseError as error:
                print(f"call {n}: HTTP {error.status}")
            except CircuitOpenError as error:
                print(f"call {n}: {error}")
        print("requests that reached the API:", api.hits["/submit"])

    asyncio.run(main())
