"""Fallback protocols, "Basic Team Integration" (monitoring half) and "Health Status Dashboard".

The team watches a stand-in MCP server named ``supabase`` (a real MCP server from the SDK,
started over stdio from ``mcp.json``) and its OpenAI quota, read from a local stand-in on
127.0.0.1 that reports 171 of 200 requests spent. The decorated ``generate_content`` of the seed
needs ``with_fallback`` and is in ``seed000_marketing_team.py``.
"""

import asyncio
import json
import logging
import os
import sys
import tempfile
from pathlib import Path

from _standins import ServiceClient, service

from buttress import ResilienceManager

HERE = Path(__file__).resolve().parent


class MarketingTeam:
    def __init__(self, quota_url):
        self.resilience = ResilienceManager("marketing-team")
        self.quota_api = ServiceClient(quota_url)

    async def start(self):
        # Start resilience monitoring
        await self.resilience.start()

        # Register custom monitors
        self.resilience.register_mcp_monitor("supabase")
        self.resilience.register_api_quota_monitor(
            "openai",
            self.check_openai_quota
        )

    def check_openai_quota(self):
        figures = self.quota_api.quota()
        return figures["used"], figures["limit"]


async def main(quota_url):
    team = MarketingTeam(quota_url)
    await team.start()
    try:
        # the monitors' first checks run at once; wait (bounded) until both have answered
        for _ in range(200):
            states = team.resilience.resources.states()
            if len(states) == 2 and all(s.checks for s in states.values()):
                break
            await asyncio.sleep(0.05)
        # Get comprehensive health report
        report = await team.resilience.get_health_report()
    finally:
        await team.resilience.stop()
    print(json.dumps(report, indent=2, default=str))


# Debug Logging
logging.basicConfig(stream=sys.stdout, format="%(levelname)s %(name)s: %(message)s")
logging.getLogger("buttress").setLevel(logging.INFO)

with service(quota=[(200, {"used": 171, "limit": 200})]) as quota, \
        tempfile.TemporaryDirectory() as directory:
    config = Path(directory) / "mcp.json"
    config.write_text(json.dumps({"mcpServers": {"supabase": {
        "command": sys.executable, "args": [str(HERE / "_mcp_standin.py")]}}}))
    os.environ["MCP_CONFIG"] = str(config)
    asyncio.run(main(quota.url))
